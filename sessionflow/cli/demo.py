"""`sessionflow demo`: realistic sample transcripts, backfilled into the local server, so a
newcomer sees both bars and a truthful summary with nothing set up."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from sessionflow.cli import options
from sessionflow.cli.backfill import BackfillOptions, execute
from sessionflow.cli.ui import text_console
from sessionflow.samples import write_sample_transcripts


def command(
    sessions: Annotated[
        int,
        typer.Option(
            "--sessions", min=1, max=100_000, metavar="N", help="How many sample transcripts."
        ),
    ] = 100,
    seed: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Seed of the samples (the same seed makes the same sessions again).",
        ),
    ] = None,
    data_dir: options.DataDir = None,
    timeout: Annotated[
        float,
        typer.Option(
            min=0, metavar="SECONDS", help="Seconds to wait for processing (0: no limit)."
        ),
    ] = 600.0,
    transport: options.TransportChoice = options.TransportName.AUTO,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object at the end.")
    ] = False,
) -> None:
    """Write N sample transcripts to a temporary folder and backfill them into the local server
    (embedded PostgreSQL in the data dir), showing both progress bars and the summary."""
    chosen_seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    with tempfile.TemporaryDirectory(prefix="sessionflow-demo-") as tmp:
        folder = Path(tmp)
        write_sample_transcripts(folder, sessions, seed=chosen_seed)
        if not json_output:
            noun = "transcript" if sessions == 1 else "transcripts"
            text_console().print(
                f"Wrote {sessions} sample {noun} to {folder} (seed {chosen_seed})", markup=False
            )
        opts = BackfillOptions(
            paths=[folder],
            server=None,
            token=None,
            data_dir=options.data_dir_or_default(data_dir),
            timeout=timeout,
            transport=options.transport(transport),
            json_output=json_output,
        )
        code = execute(opts)
    raise typer.Exit(code)
