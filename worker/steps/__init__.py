"""The erasure job's steps, in order: prepare → measure → unlearn → verify → publish.

Each step is a module with one public `run` function: typed inputs (the `Attempt` holding the
lease, and what earlier steps returned) and a typed output (a frozen dataclass of its module).
The steps import ltu_core (torch) at the top; only the orchestrator, worker/job.py, imports them
lazily, so that the API process (which embeds the runner) never loads torch until a job runs.
"""
