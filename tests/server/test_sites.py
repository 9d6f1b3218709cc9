"""Multi-site brokerage: a workflow spread over sites by share or pinned to one site, validated
with clear errors, honoured by the broker at submission (and for jobs appended later), visible
in the REST API."""

import math
from collections import Counter

import pytest
from sqlalchemy import select

from pandaflow.errorcodes import ErrorCode
from pandaflow.server.app import ServerState, create_app, sync_queues
from pandaflow.server.dispatch import completion
from pandaflow.server.jobs import sites, submission
from pandaflow.server.jobs.broker import Broker, BrokerageError
from pandaflow.server.jobs.queues import parse_queues
from pandaflow.server.store import schema as s

PREFIX = "/api/v1"
TOKEN = "t"
SHARES = {"FrDF": 0.5, "UKDF": 0.25, "USDF": 0.25}

# Three sites; UKDF has no queue above 4 GB; USDF also has a brokerage-off test queue.
SITE_QUEUES = [
    {"name": "FR", "site": "FrDF", "max_memory_mb": 4000},
    {"name": "FR_himem", "site": "FrDF", "min_memory_mb": 4000, "max_memory_mb": 16000},
    {"name": "UK", "site": "UKDF", "max_memory_mb": 4000},
    {"name": "US", "site": "USDF", "max_memory_mb": 4000},
    {"name": "US_himem", "site": "USDF", "min_memory_mb": 4000, "max_memory_mb": 16000},
    {"name": "US_test", "site": "USDF", "max_memory_mb": 4000, "brokerage": False},
]
SITE_OF = {q["name"]: q["site"] for q in SITE_QUEUES}


@pytest.fixture
def broker():
    return Broker(parse_queues(SITE_QUEUES))


@pytest.fixture
def api(engine):
    queues = parse_queues(SITE_QUEUES)
    sync_queues(engine, queues)

    class NoDispatcher:
        endpoint, epoch = "tcp://127.0.0.1:1", "e"

        def poke(self, message):
            pass

    client = create_app(ServerState(engine, queues, Broker(queues), TOKEN, NoDispatcher())).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return client


def jobs(n, prefix="j", **fields):
    return [{"name": f"{prefix}{i}", "command": "true", **fields} for i in range(n)]


def sites_of(engine, workflow_id=None):
    query = select(s.jobs.c.queue)
    if workflow_id is not None:
        query = query.where(s.jobs.c.workflow_id == workflow_id)
    with engine.connect() as conn:
        return Counter(SITE_OF[q] for q in conn.execute(query).scalars())


# ---------------------------------------------------------------- the policy and its errors


def test_shares_are_weights_normalised_to_one_and_site_pins_to_one_site(broker):
    assert sites.parse({"USDF": 1, "FrDF": 2, "UKDF": 1}, None, broker.sites).shares == SHARES
    pinned = sites.parse(None, "USDF", broker.sites)
    assert pinned.shares == {"USDF": 1.0} and pinned.pinned == "USDF"
    assert sites.parse(None, None, broker.sites) is None


@pytest.mark.parametrize(
    "given, message",
    [
        ({"sites": {"FrDF": 1}, "site": "USDF"}, "give 'sites' (shares"),
        ({"site": "Mars"}, "unknown site 'Mars' in 'site'; known sites: FrDF, UKDF, USDF"),
        ({"site": ""}, "'site' must be the name of a site"),
        ({"site": 3}, "'site' must be the name of a site"),
        (
            {"sites": {"FrDF": 0.5, "Moon": 0.5}},
            "unknown site(s) 'Moon' in 'sites'; known sites: FrDF, UKDF, USDF",
        ),
        ({"sites": {}}, "'sites' must map site names to shares"),
        ({"sites": ["FrDF", "USDF"]}, "'sites' must map site names to shares"),
        ({"sites": {"FrDF": 0}}, "the share of site 'FrDF' in 'sites' must be a positive number, got 0"),
        ({"sites": {"FrDF": -1}}, "must be a positive number, got -1"),
        ({"sites": {"FrDF": "half"}}, "must be a positive number, got 'half'"),
        ({"sites": {"FrDF": True}}, "must be a positive number, got True"),
        ({"sites": {"FrDF": math.inf}}, "must be a positive number, got inf"),
    ],
)
def test_a_bad_site_policy_is_refused_with_what_is_allowed(broker, given, message):
    with pytest.raises(sites.SiteError) as refused:
        sites.parse(given.get("sites"), given.get("site"), broker.sites)
    assert message in str(refused.value)


# ---------------------------------------------------------------- the broker honours it


def route(broker, policy, specs, phase=0.0):
    """Broker job specs the way a request is: the site broker sees them all first, then each one."""
    routed = sites.SiteBroker(broker, policy, specs, phase)
    return [routed.choose(j.get("memory_mb"), j.get("cores") or 1, j.get("walltime_s")) for j in specs]


def test_shares_hold_exactly_over_many_jobs_and_within_a_job_at_every_point(broker):
    chosen = route(broker, sites.SitePolicy(SHARES), jobs(4000), phase=sites.seed("many"))
    seen = Counter()
    for n, queue in enumerate(chosen, start=1):
        seen[SITE_OF[queue]] += 1
        # not only at the end: every prefix of the request is split by the shares too
        assert all(abs(seen[site] - n * share) <= 1.5 for site, share in SHARES.items()), (n, seen)
    assert seen == {"FrDF": 2000, "UKDF": 1000, "USDF": 1000}


def test_sites_interleave_rather_than_take_the_jobs_in_blocks(broker):
    first = [SITE_OF[q] for q in route(broker, sites.SitePolicy(SHARES), jobs(8))]
    assert first[:4] == ["FrDF", "UKDF", "USDF", "FrDF"] and Counter(first) == {
        "FrDF": 4,
        "UKDF": 2,
        "USDF": 2,
    }


def test_counts_that_do_not_divide_evenly_round_each_way_as_often_as_the_shares_say():
    shares = [0.5, 0.25, 0.25]
    # 7 jobs: 3.5 / 1.75 / 1.75, each rounded down or up, always 7 in all
    for tenth in range(10):
        counts = sites.apportion(7, shares, tenth / 10)
        assert sum(counts) == 7 and all(abs(c - 7 * w) < 1 for c, w in zip(counts, shares, strict=True))
    # one job per request, at 1000 evenly spread phases: each site gets it as often as its share
    winners = Counter(sites.apportion(1, shares, i / 1000).index(1) for i in range(1000))
    assert winners == {0: 500, 1: 250, 2: 250}


def test_each_job_shape_is_shared_on_its_own(broker):
    mixed = [
        spec
        for pair in zip(jobs(400, memory_mb=1000), jobs(400, walltime_s=3600.0), strict=True)
        for spec in pair
    ]
    chosen = route(broker, sites.SitePolicy(SHARES), mixed, phase=0.5)
    small = Counter(SITE_OF[q] for q, spec in zip(chosen, mixed, strict=True) if "memory_mb" in spec)
    long = Counter(SITE_OF[q] for q, spec in zip(chosen, mixed, strict=True) if "walltime_s" in spec)
    assert small == long == {"FrDF": 200, "UKDF": 100, "USDF": 100}


def test_a_shape_some_sites_cannot_hold_goes_to_the_others_by_their_shares(broker):
    big = Counter(route(broker, sites.SitePolicy(SHARES), jobs(300, memory_mb=8000)))
    # UKDF has nothing above 4 GB: FrDF and USDF share 0.5 : 0.25, i.e. 2 : 1
    assert big == {"FR_himem": 200, "US_himem": 100}


def test_a_pinned_workflow_goes_to_the_tightest_queue_of_its_site(broker):
    routed = sites.SiteBroker(broker, sites.parse(None, "USDF", broker.sites))
    assert {routed.choose(1000, 1, None) for _ in range(50)} == {"US"}
    assert routed.choose(8000, 1, None) == "US_himem"


def test_a_shape_no_site_of_the_workflow_can_hold_is_refused_naming_each_site(broker):
    routed = sites.SiteBroker(broker, sites.parse(None, "UKDF", broker.sites))
    with pytest.raises(BrokerageError, match="no queue at site 'UKDF' can hold a job with memory=8000 MB"):
        routed.choose(8000, 1, None)


def test_a_job_naming_a_queue_must_name_one_of_the_workflows_sites(broker):
    routed = sites.SiteBroker(broker, sites.parse(None, "USDF", broker.sites))
    assert routed.choose(1000, 1, None, queue="US_test") == "US_test"  # brokerage off, named: fine
    with pytest.raises(
        BrokerageError, match="queue 'FR' is at site 'FrDF', which is not among the workflow's"
    ):
        routed.choose(1000, 1, None, queue="FR")


def test_the_same_request_is_brokered_the_same_way(broker):
    policy = sites.SitePolicy(SHARES)
    assert sites.seed("wf", 50, "j0") == sites.seed("wf", 50, "j0") != sites.seed("wf", 51, "j0")
    once = route(broker, policy, jobs(50), sites.seed("wf", 50, "j0"))
    assert once == route(broker, policy, jobs(50), sites.seed("wf", 50, "j0"))


def test_an_out_of_memory_retry_stays_at_the_jobs_site(engine, broker):
    queues = list(broker.queues.values())
    sync_queues(engine, queues)
    routed = sites.SiteBroker(broker, sites.parse(None, "USDF", broker.sites))
    clean = submission.validate(jobs(1, memory_mb=3000, memory_multiplier=2.0), routed)
    with engine.begin() as conn:
        stored = submission.store(conn, clean, submission.WorkflowBook(), workflow="oom")
        (job_id,) = stored.ids.values()
        conn.execute(s.jobs.update().values(status="running", attempt=1))
        oom = completion.outcome(job_id, 1, ErrorCode.OUT_OF_MEMORY, "killed: out of memory")
        completion.record(conn, [oom], 0.0, broker)
        row = conn.execute(select(s.jobs.c.status, s.jobs.c.queue, s.jobs.c.memory_mb)).one()
    # FR_himem would fit as well and sorts first; the job stays at USDF
    assert tuple(row) == ("ready", "US_himem", 6000)


# ---------------------------------------------------------------- over REST


def test_a_workflow_submitted_with_shares_is_spread_over_its_sites(api, engine):
    reply = api.post(f"{PREFIX}/workflows", json={"name": "spread", "jobs": jobs(400), "sites": SHARES})
    assert reply.status_code == 201, reply.get_json()
    body = reply.get_json()
    assert body["sites"] == {"FrDF": 200, "UKDF": 100, "USDF": 100}
    assert sites_of(engine) == body["sites"]
    detail = api.get(f"{PREFIX}/workflows/{body['workflow_id']}").get_json()
    assert detail["sites"] == SHARES


def test_a_pinned_workflow_runs_only_at_its_site(api, engine):
    reply = api.post(
        f"{PREFIX}/workflows",
        json={"name": "pinned", "jobs": jobs(20) + jobs(5, "big", memory_mb=8000), "site": "FrDF"},
    )
    assert reply.status_code == 201 and reply.get_json()["sites"] == {"FrDF": 25}
    assert sites_of(engine) == {"FrDF": 25}
    assert api.get(f"{PREFIX}/workflows/{reply.get_json()['workflow_id']}").get_json()["sites"] == {
        "FrDF": 1.0
    }


def test_a_workflow_without_sites_is_brokered_as_before(api, engine):
    reply = api.post(f"{PREFIX}/workflows", json={"name": "anywhere", "jobs": jobs(3)})
    assert "sites" not in reply.get_json()
    assert api.get(f"{PREFIX}/workflows/{reply.get_json()['workflow_id']}").get_json()["sites"] is None
    with engine.connect() as conn:
        assert set(conn.execute(select(s.jobs.c.queue)).scalars()) == {"FR"}  # tightest, then name


def test_jobs_appended_in_small_pieces_follow_the_workflows_shares(api, engine):
    created = api.post(
        f"{PREFIX}/workflows", json={"name": "pieces", "jobs": jobs(1, "seed"), "sites": SHARES}
    )
    workflow_id = created.get_json()["workflow_id"]
    for i in range(199):
        reply = api.post(f"{PREFIX}/workflows/{workflow_id}/jobs", json={"jobs": jobs(2, f"piece{i}-")})
        assert reply.status_code == 201 and sum(reply.get_json()["sites"].values()) == 2
    found = sites_of(engine, workflow_id)
    assert sum(found.values()) == 399
    for site, share in SHARES.items():  # each piece starts at its own point: the shares hold overall
        assert abs(found[site] / 399 - share) < 0.05, found


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"site": "Mars"}, "unknown site 'Mars'"),
        ({"sites": {"FrDF": 0.5}, "site": "USDF"}, "not both"),
        ({"sites": {"FrDF": "lots"}}, "sites.FrDF: expected a share (a number from 0.000001 to 1000000)"),
        ({"sites": {"FrDF": 1e300, "USDF": 1e300}}, "sites.FrDF: expected a share (a number from 0.000001"),
        ({"sites": {}}, "sites: expected a mapping of site names to shares (e.g. FrDF: 0.5), got an empty"),
        ({"site": None}, "site: expected the name of a site, got null"),
    ],
)
def test_a_bad_site_policy_is_a_400_and_stores_nothing(api, engine, extra, message):
    reply = api.post(f"{PREFIX}/workflows", json={"name": "bad", "jobs": jobs(2), **extra})
    assert reply.status_code == 400 and message in reply.get_json()["error"]
    with engine.connect() as conn:
        assert conn.execute(select(s.workflows)).first() is None


def test_a_job_the_workflows_sites_cannot_hold_refuses_the_whole_submission(api, engine):
    body = {"name": "too-big", "jobs": jobs(3) + jobs(1, "huge", memory_mb=8000), "site": "UKDF"}
    reply = api.post(f"{PREFIX}/workflows", json=body)
    assert reply.status_code == 400
    assert reply.get_json()["problems"] == [
        "jobs[3] (huge0): no queue at site 'UKDF' can hold a job with memory=8000 MB, cores=1, walltime=0 s: "
        "queue 'UK' holds at most 4000 MB, job asks 8000 MB"
    ]
    with engine.connect() as conn:
        assert conn.execute(select(s.jobs)).first() is None


def test_the_openapi_document_describes_the_site_fields(api):
    schemas = api.get(f"{PREFIX}/openapi.json").get_json()["components"]["schemas"]
    assert {"sites", "site"} <= set(schemas["SubmitRequest"]["properties"])
    assert "sites" in schemas["Submitted"]["properties"] and "sites" in schemas["Workflow"]["properties"]
