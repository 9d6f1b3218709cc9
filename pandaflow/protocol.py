"""The ZeroMQ wire protocol between the server, pilots and executors: every message a typed
struct, the same field names on every hop (they are the columns of the job tables).

Every message is one ZeroMQ frame holding a msgpack map with an ``"op"`` tag. Messages are
decoded and validated in one step (msgspec): a frame that is not a known message, or whose
fields have the wrong types, raises :class:`ProtocolError` naming the field, and the receiver
answers :class:`Error` and logs it; nothing of it is applied. Maps carry plain data only:
function and result payloads travel as opaque ``bytes`` that the server stores and forwards but
never deserializes, so no peer can make the server unpickle anything.

Each message to the server carries ``tok`` (its credential).

Executor -> server: :class:`Submit` (-> :class:`Submitted`), :class:`Sync` (-> :class:`Synced`
and :class:`Results`), :class:`Ping` (-> :class:`Pong`).
Pilot -> server: :class:`Register` (-> :class:`Registered`), :class:`Request` (-> :class:`Jobs`,
possibly later), :class:`Started`, :class:`Report` (-> :class:`Acked`), :class:`Returned`,
:class:`Heartbeat` (-> :class:`Beat`), :class:`Bye`.
Server -> pilot, unasked: :class:`Jobs`, :class:`Kill`, :class:`Reclaim`, :class:`Reregister`.
Any -> any: :class:`Error`.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

PROTOCOL_VERSION = 2


# Integers that end in 32-bit columns, and counts a peer may ask for: bounded, so that no message
# can overflow a statement (a malformed one is refused at decoding instead).
Int32 = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
Count = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]


class ProtocolError(ValueError):
    """A frame that is not a valid message; the text says what is wrong with it."""


class _Message(msgspec.Struct, tag_field="op", kw_only=True):
    """Base of every message: the ``op`` tag names it."""


class _ToServer(_Message, kw_only=True):
    tok: str = ""


# ---------------------------------------------------------------- shared parts


class Want(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a pilot asks for: ``n`` jobs, ``free`` of which would start at once (the rest is
    prefetch, see :mod:`pandaflow.server.dispatch.dispatcher`), fitting ``cores`` and ``memory_mb``."""

    n: Count = 0
    free: Count = 0
    cores: Int32 | None = None
    memory_mb: Int32 | None = None


class Payload(msgspec.Struct, omit_defaults=True):
    """One attempt of a job handed to a pilot."""

    job_id: Int32
    attempt: Int32
    kind: str  # "python" (parsl buffer) or "shell" (command line)
    buffer: bytes | None = None  # parsl pack_apply_message buffer, for kind="python"
    command: str | None = None  # for kind="shell"; run with /bin/bash -c
    env: dict[str, str] | None = None  # extra environment for shell commands
    cores: int = 1
    memory_mb: int | None = None  # limit: kill if the payload tree's RSS exceeds it
    walltime_s: float | None = None  # limit: kill if it runs longer


class Outcome(msgspec.Struct, omit_defaults=True):
    """How one attempt ended, with everything the server records of it (the names are the job
    table's columns). Made by the pilot's runner, or by the server for a pilot it lost."""

    job_id: Int32
    attempt: Int32
    ok: bool  # True: finished successfully
    error_code: Int32 = 0  # ErrorCode value, 0 when ok
    error_diag: str = ""  # one-line human diagnosis
    exit_code: Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)] | None = None  # shell exit code
    result: bytes | None = None  # python: parsl-serialized result, or RemoteExceptionWrapper
    is_exception: bool = False
    stdout_tail: str | None = None  # last ~2 KiB of combined stdout/stderr (None: not known)
    log: bytes = b""  # combined stdout+stderr, capped (tail kept, first line says so)
    max_rss_mb: float = 0.0
    max_pss_mb: float = 0.0
    started_at: float = 0.0  # time.time(); 0: not known
    ended_at: float = 0.0
    # (t - started_at, rss_mb, pss_mb) per memory sample
    memory_samples: list[tuple[float, float, float]] = []


class Result(msgspec.Struct, kw_only=True):
    """What a submitting executor is told of a job that ended."""

    job_id: int
    uid: str
    status: str
    error_code: int = 0
    error_diag: str = ""
    result: bytes | None = None
    is_exception: bool = False


# ---------------------------------------------------------------- executor <-> server


class Submit(_ToServer, tag="submit", kw_only=True):
    """Jobs to store (each checked on its own: one bad job is rejected, the others stored).
    ``client`` names the executor's main socket, where the answer goes (default: the sender)."""

    client: str = ""
    batch: Int32
    workflow: str = "default"
    owner: str = ""
    fresh: bool = False
    # A named run's first send after a (re)start: jobs already stored are re-attached (finished
    # ones answered at once, failed or cancelled ones run again, the others awaited).
    attach: bool = False
    jobs: list[dict[str, Any]]


class Sync(_ToServer, tag="sync", kw_only=True):
    client: str = ""
    uids: list[str] = []


class Ping(_ToServer, tag="ping", kw_only=True):
    """An executor's keep-alive: ``grace`` seconds without one and its unfinished jobs are
    cancelled (0: never); ``run`` is its run name, if it has one."""

    client: str = ""
    run: str = ""
    grace: float = 0.0


class Submitted(_Message, tag="submitted", kw_only=True):
    batch: int | None = None
    accepted: int = 0
    rejected: dict[str, str] = {}
    error: str = ""


class Synced(_Message, tag="synced", kw_only=True):
    unknown: list[str] = []
    epoch: str = ""


class Pong(_Message, tag="pong", kw_only=True):
    epoch: str = ""


class Results(_Message, tag="results", kw_only=True):
    results: list[Result]


# ---------------------------------------------------------------- pilot <-> server


class Register(_ToServer, tag="register", kw_only=True):
    queue: str
    host: str = ""
    pid: Int32 | None = None
    cores: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    memory_mb: Int32 | None = None
    workdir: str = ""
    version: str = ""
    worker_id: Int32 | None = None  # the harvester worker the pilot runs in


class Request(_ToServer, tag="request", kw_only=True):
    want: Want


class Started(_ToServer, tag="started", kw_only=True):
    """Jobs the pilot started: ``[job_id, attempt, started_at]`` each (sent promptly, batched)."""

    jobs: list[tuple[Int32, Int32, float]]


class Report(_ToServer, tag="report", kw_only=True):
    """Attempts that ended, and (``started``, as in :class:`Started`) others that started since
    the last message; the server acknowledges the outcomes once they are committed."""

    outcomes: list[Outcome]
    started: list[tuple[Int32, Int32, float]] = []
    want: Want | None = None


class Returned(_ToServer, tag="returned", kw_only=True):
    """Jobs the pilot gives back unstarted: ``[job_id, attempt]`` each."""

    jobs: list[tuple[Int32, Int32]]
    want: Want | None = None


class Heartbeat(_ToServer, tag="heartbeat", kw_only=True):
    known: list[Int32] = []  # every job the pilot holds, queued, running or reported unacknowledged
    running: dict[Int32, float] = {}  # job id -> started_at
    progress: dict[Int32, tuple[str, float]] = {}  # job id -> (output tail, memory high-water MB)
    want: Want | None = None


class Bye(_ToServer, tag="bye", kw_only=True):
    pass


class Registered(_Message, tag="registered", kw_only=True):
    pilot_id: int
    epoch: str
    heartbeat_interval: float


class Jobs(_Message, tag="jobs", kw_only=True):
    jobs: list[Payload]


class Acked(_Message, tag="acked", kw_only=True):
    ids: list[tuple[int, int]]  # [job_id, attempt]


class Kill(_Message, tag="kill", kw_only=True):
    ids: list[int]


class Reclaim(_Message, tag="reclaim", kw_only=True):
    """Give back these jobs if not started yet (``[job_id, attempt]`` each): a pilot is idle."""

    jobs: list[tuple[int, int]]


class Beat(_Message, tag="hb", kw_only=True):
    epoch: str
    kill: list[int] = []


class Reregister(_Message, tag="reregister", kw_only=True):
    epoch: str = ""


class Error(_Message, tag="error", kw_only=True):
    message: str
    fatal: bool = False


# ---------------------------------------------------------------- encoding

ToServer = Submit | Sync | Ping | Register | Request | Started | Report | Returned | Heartbeat | Bye
ToPilot = Registered | Jobs | Acked | Kill | Reclaim | Beat | Reregister | Error
ToExecutor = Submitted | Synced | Pong | Results | Error

_encoder = msgspec.msgpack.Encoder()
_server = msgspec.msgpack.Decoder(ToServer)
_pilot = msgspec.msgpack.Decoder(ToPilot)
_executor = msgspec.msgpack.Decoder(ToExecutor)


def encode(message: msgspec.Struct) -> bytes:
    """One message as a frame."""
    return _encoder.encode(message)


def _decode(decoder: msgspec.msgpack.Decoder, frame: bytes, known: Any) -> Any:
    try:
        return decoder.decode(frame)
    except msgspec.ValidationError as exc:
        op = op_of(frame)
        if str(exc).endswith("at `$.op`"):
            ops = sorted(t.__struct_config__.tag for t in known.__args__)
            raise ProtocolError(f"unknown op {op!r}; known: {', '.join(ops)}") from None
        raise ProtocolError(f"invalid {op + ' ' if op else ''}message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"undecodable message: {exc}") from None


def to_server(frame: bytes) -> ToServer:
    """Decode a frame a pilot or an executor sent; raises :class:`ProtocolError`."""
    return _decode(_server, frame, ToServer)


def to_pilot(frame: bytes) -> ToPilot:
    """Decode a frame the server sent a pilot; raises :class:`ProtocolError`."""
    return _decode(_pilot, frame, ToPilot)


def to_executor(frame: bytes) -> ToExecutor:
    """Decode a frame the server sent an executor; raises :class:`ProtocolError`."""
    return _decode(_executor, frame, ToExecutor)


class _Credential(msgspec.Struct):
    tok: str = ""


_credential = msgspec.msgpack.Decoder(_Credential)


def credential_of(frame: bytes) -> str:
    """The ``tok`` of a frame that failed to decode, if it has one: a peer is told it is not
    authenticated before it is told what is wrong with its message."""
    try:
        return _credential.decode(frame).tok
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""


def op_of(frame: bytes) -> str:
    """The ``op`` of a frame that failed to decode, if it has one (for the error reply)."""
    try:
        raw = msgspec.msgpack.decode(frame)
    except msgspec.DecodeError:
        return ""
    return str(raw.get("op", "")) if isinstance(raw, dict) else ""


def pack(data: Any) -> bytes:
    """Plain data as msgpack (the server's in-process control messages)."""
    return _encoder.encode(data)


def unpack(frame: bytes) -> Any:
    return msgspec.msgpack.decode(frame)
