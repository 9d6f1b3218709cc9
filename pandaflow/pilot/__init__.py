"""The pilot: an agent that runs jobs from the server on a worker node."""
