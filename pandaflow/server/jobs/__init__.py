"""The model of jobs: states and their one writer, submission, data-aware release, brokerage,
queues, sites, user control, and the demand the harvester reads."""
