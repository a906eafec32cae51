"""Reading what an experiment wrote in the shared results format."""

import json


def read_results(out):
    """(metrics, rows) of results/NAME/metrics.json; checks the plot NAME.png was drawn."""
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["quick"] is True
    assert (out / f"{out.name}.png").stat().st_size > 1000
    return payload["metrics"], payload["rows"]
