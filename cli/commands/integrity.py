"""`verify`, `checkpoint`, `prove`, `verify-proof`: tamper evidence an auditor can check.

`verify-proof` opens no database: an outsider checks a proof with the ledger's public key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from cli import logs
from cli.output import emit_json, json_option, progress_enabled
from cli.params import pass_context, pass_ledger
from ledger.errors import InputError, IntegrityFailure

PUBLIC_KEY = click.option(
    "--public-key",
    "public_key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The ledger's public key (signing.pub) as the auditor keeps it. "
    "Default: signing.pub in the key folder.",
)


def read_document(value: str, what: str) -> Any:
    """A JSON document given inline or as a file path."""
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).read_text()
        except OSError as error:
            raise InputError(f"cannot read the {what} {value}: {error.strerror}") from None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise InputError(f"the {what} is not JSON") from None


def _checkpoint_arg(ledger: Any, value: str) -> dict[str, Any]:
    from ledger.persistence.seals import checkpoint_by_size, latest_checkpoint

    if value == "latest":
        return latest_checkpoint(ledger)
    if value.isdigit():
        return checkpoint_by_size(ledger, int(value))
    document = read_document(value, "checkpoint")
    if not isinstance(document, dict):
        raise InputError("a checkpoint must be a JSON object")
    return document


def _fail_if(problems: list[Any], what: str) -> None:
    if problems:
        raise IntegrityFailure(f"{what}: {len(problems)} problem(s)")


@click.command("verify")
@click.option(
    "--since",
    metavar="CHECKPOINT",
    help="A checkpoint you kept (file or JSON): check only the growth since it.",
)
@click.option(
    "--read-models",
    "read_models",
    is_flag=True,
    help="Also rebuild every read model from the events (in a transaction rolled back) and "
    "hold the read models that audit check and the reports read against them.",
)
@PUBLIC_KEY
@json_option
@pass_context
def verify(
    context: Any, since: str | None, read_models: bool, public_key: Path | None, as_json: bool
) -> None:
    """Check that no recorded fact was altered, removed, inserted or reordered (exit 4 if so).

    The read models are derived from the events, and not covered unless --read-models is
    given: then each is rebuilt from the events and compared row for row with the one
    answering (a row changed, removed or added outside consent-ledger is a problem)."""
    from ledger.persistence.seals import load_public_key, verify_ledger

    kept = read_document(since, "checkpoint") if since else None
    try:
        ledger = context.ledger
        key = load_public_key(ledger.database, public_key) if public_key else None
        result = verify_ledger(ledger, since=kept, public_key=key)
        if read_models and result.ok:
            # (A ledger that fails verify is not folded again: its events are in doubt, and
            # may not even be readable; the problems found say so already.)
            _check_read_models(ledger, result)
    except IntegrityFailure as failure:
        # The ledger cannot even be read (a damaged file, a row of a type never written):
        # not ok, and a script reading `--json` is told so in the document it expects.
        if as_json:
            problem = {"kind": failure.problem_kind, "message": str(failure)}
            emit_json({"ok": False, "facts": 0, "head": None, "problems": [problem]})
        raise
    logs.log.info("verify", ok=result.ok, facts=result.facts, problems=len(result.problems))
    if as_json:
        emit_json(result.to_json())
    elif result.ok:
        scope = " since the kept checkpoint" if kept else ""
        click.echo(f"OK: {result.facts} facts ({result.events} events) verified{scope}")
        click.echo(f"head {result.head}")
        if read_models:
            click.echo("every read model agrees with the events")
    else:
        if read_models and not _altered_read_model(result.problems):
            click.echo("the read models were not checked: the ledger failed verification")
        click.echo(f"FAILED: {len(result.problems)} problem(s) in {result.events} events")
        for problem in result.problems:
            click.echo(f"  {problem['kind']}: {problem['message']}")
    _fail_if(result.problems, "the ledger failed verification")


def _altered_read_model(problems: list[Any]) -> bool:
    return any(p.get("kind") == "read_model_altered" for p in problems)


def _check_read_models(ledger: Any, result: Any) -> None:
    """Add to `result` a problem for each read model that disagrees with the events."""
    if progress_enabled():
        click.echo("rebuilding the read models from the events to compare them", err=True)
    head, differing = ledger.read_models.check()
    for name, rows in differing.items():
        result.problems.append(
            {
                "kind": "read_model_altered",
                "message": f"the read model {name} disagrees with the events up to event "
                f"{head} ({rows} rows differ): altered outside consent-ledger; "
                f"'consent-ledger projections rebuild {name}' makes it again",
                "event": head,
            }
        )


@click.command("checkpoint")
@json_option
@pass_ledger
def checkpoint(ledger: Any, as_json: bool) -> None:
    """The latest signed checkpoint: keep it to check later that history only grew."""
    from ledger.persistence.seals import latest_checkpoint

    document = latest_checkpoint(ledger)
    if as_json:
        emit_json(document)
        return
    click.echo(f"tree size {document['tree_size']}, signed {document['time']}")
    click.echo(f"root      {document['root_hash']}")
    click.echo(f"key id    {document['key_id']}")
    click.echo("Keep it with: consent-ledger checkpoint --json > checkpoint.json")


@click.command("prove")
@click.argument("fact_id", required=False)
@click.option(
    "--consistency",
    nargs=2,
    metavar="OLD NEW",
    help="Prove checkpoint NEW extends OLD (each a file, JSON, a tree size or 'latest').",
)
@json_option
@pass_ledger
def prove(
    ledger: Any, fact_id: str | None, consistency: tuple[str, str] | None, as_json: bool
) -> None:
    """An inclusion proof of FACT_ID against the latest checkpoint, or a consistency proof."""
    from ledger.persistence.seals import prove_consistency, prove_fact

    if (fact_id is None) == (consistency is None):
        raise click.UsageError("give either FACT_ID or --consistency OLD NEW")
    if consistency is not None:
        old, new = (_checkpoint_arg(ledger, value) for value in consistency)
        document = prove_consistency(ledger, old, new)
        summary = f"tree size {document['new']['tree_size']} extends {document['old']['tree_size']}"
    else:
        assert fact_id is not None
        document = prove_fact(ledger, fact_id)
        summary = (
            f"fact {fact_id}: leaf {document['leaf_index']} of tree size "
            f"{document['checkpoint']['tree_size']}"
        )
    if as_json:
        emit_json(document)
        return
    click.echo(f"{summary}, {len(document['path'])} hashes in the proof")
    click.echo("Save it with --json; check it anywhere with: consent-ledger verify-proof FILE")


@click.command("verify-proof")
@click.argument("proof")
@click.option(
    "--public-key",
    "public_key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The ledger's public key (signing.pub) as you got it from the ledger's owner. "
    "Without it the key inside the proof is used: that shows the proof is whole, not that "
    "the ledger signed it (compare the key id printed).",
)
@json_option
def verify_proof(proof: str, public_key: Path | None, as_json: bool) -> None:
    """Check a proof (file or JSON) offline, without any database (exit 4 if it fails).

    The key should be the ledger's signing.pub as you got it from the ledger's owner; without
    --public-key the key printed in the proof is used, and its key id is shown to compare.
    """
    from ledger import integrity

    document = read_document(proof, "proof")
    if public_key is not None:
        key: Any = public_key.read_bytes()
        source = str(public_key)
    else:
        key = _embedded_key(document)
        source = "the proof itself (compare the key id with the ledger's)"
    try:
        loaded = integrity.load_public_key(key)
    except ValueError as error:
        raise InputError(f"the public key from {source} is unusable: {error}") from None
    problems = integrity.verify_proof(document, loaded)
    result = {
        "ok": not problems,
        "type": document.get("type") if isinstance(document, dict) else None,
        "key_id": integrity.key_id(loaded),
        "key_pinned": public_key is not None,
        "problems": problems,
    }
    if public_key is None:
        click.echo(
            f"Warning: no --public-key: checked against the key inside the proof (key id "
            f"{result['key_id']}), which whoever made the proof chose; compare that key id "
            "with the ledger's signing.pub",
            err=True,
        )
    if as_json:
        emit_json(result)
    elif problems:
        click.echo("FAILED")
        for problem in problems:
            click.echo(f"  {problem}")
    else:
        click.echo(f"OK: {result['type']} proof holds (key {result['key_id']} from {source})")
    _fail_if(problems, "the proof does not hold")


def _embedded_key(document: Any) -> Any:
    if isinstance(document, dict):
        for holder in (document, document.get("checkpoint"), document.get("new")):
            if isinstance(holder, dict) and holder.get("public_key"):
                return holder["public_key"]
    raise InputError("the proof carries no public key: give --public-key signing.pub")


commands = [verify, checkpoint, prove, verify_proof]
