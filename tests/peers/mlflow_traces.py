"""Print the traces of an MLflow experiment as JSON, read through MLflow's own client API.

Run with the MLflow peer venv's python (not agentstream's):
    python mlflow_traces.py <tracking uri> <experiment id>
"""

from __future__ import annotations

import json
import sys

import mlflow
from mlflow import MlflowClient


def main() -> None:
    uri, experiment_id = sys.argv[1], sys.argv[2]
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    out = []
    for found in mlflow.search_traces(locations=[experiment_id], return_type="list"):
        trace = client.get_trace(found.info.trace_id)
        out.append(
            {
                "trace_id": trace.info.trace_id,
                "state": str(trace.info.state.value if trace.info.state else ""),
                "metadata": dict(trace.info.trace_metadata or {}),
                "tags": dict(trace.info.tags or {}),
                "spans": [
                    {
                        "name": span.name,
                        "span_id": span.span_id,
                        "parent_id": span.parent_id,
                        "status": str(span.status.status_code.value),
                        "status_message": span.status.description,
                        "span_type": span.span_type,
                        "start_ns": span.start_time_ns,
                        "end_ns": span.end_time_ns,
                        "attributes": span.attributes,
                        "events": [event.name for event in span.events],
                    }
                    for span in trace.data.spans
                ],
            }
        )
    json.dump(out, sys.stdout, default=str)


if __name__ == "__main__":
    main()
