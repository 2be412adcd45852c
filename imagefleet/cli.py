"""``imagefleet``: submit prompts, follow jobs, download the images and a contact sheet.

Every expected failure is one ``error: ...`` line on stderr and an exit code (EXIT_CODES); the
API key is sent in a header and never printed.
"""
from __future__ import annotations

import functools
import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from imagefleet import contact_sheet, download as dl, inputs, upload, watch
from imagefleet.client import DEFAULT_API, ApiClient, ApiError, ClientError, job_body

EXIT_CODES = {
    0: "done: the command worked (with --wait: every item succeeded)",
    1: "the API answered with an error, or a download failed",
    2: "bad usage or a bad input file (nothing was submitted)",
    3: "the API could not be reached",
    4: "with --wait: the job ended failed or cancelled",
    5: "with --wait: the job partially succeeded",
    6: "with --wait-timeout: the job was still running",
    130: "interrupted (Ctrl-C); the job goes on",
}

app = typer.Typer(
    name="imagefleet",
    help="Generate images at scale with imagefleet: submit prompts, follow jobs, download the results.",
    no_args_is_help=True,
    add_completion=False,
    # Never print local variables in a traceback: one of them is the API key.
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items()),
)

# --- options shared by the commands -----------------------------------------------------------

ApiOption = Annotated[Optional[str], typer.Option(
    "--api", help="Base URL of the API [env: IMAGEFLEET_API; default: http://localhost:8080]",
    show_default=False)]
KeyOption = Annotated[Optional[str], typer.Option(
    "--api-key", help="Key sent as X-API-Key (prefer the env var: a flag shows in `ps`) [env: IMAGEFLEET_API_KEY]",
    show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer as it is")]
OutOption = Annotated[Optional[Path], typer.Option(
    "--out", "-o", help="Folder for the images, manifest and contact sheet [default: ./out/JOB_ID]",
    show_default=False, file_okay=False)]
ProjectOption = Annotated[Optional[str], typer.Option(
    "--project", envvar="GOOGLE_CLOUD_PROJECT",
    help="Google Cloud project billed for the downloads (optional; reading needs none)", show_default=False)]
IntervalOption = Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between status polls")]
WaitTimeoutOption = Annotated[Optional[float], typer.Option(
    "--wait-timeout", min=1, help="Give up following after this many seconds (exit 6); the job goes on",
    show_default=False)]


class UsageProblem(ClientError):
    exit_code = 2


@dataclass(frozen=True)
class Settings:
    """The options given before the command."""

    api: str = DEFAULT_API
    api_key: str | None = None
    id_token: str | None = None
    timeout: float = 30.0


@app.callback()
def _global(
    ctx: typer.Context,
    api: Annotated[str, typer.Option("--api", envvar="IMAGEFLEET_API", help="Base URL of the API",
                                     show_envvar=True)] = DEFAULT_API,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="IMAGEFLEET_API_KEY", show_envvar=True, show_default=False,
        help="Key sent as X-API-Key; prefer the env var (a flag shows in `ps`)")] = None,
    id_token: Annotated[Optional[str], typer.Option(
        "--id-token", envvar="IMAGEFLEET_ID_TOKEN", show_envvar=True, show_default=False,
        help="Identity token for a private Cloud Functions deployment: $(gcloud auth print-identity-token)")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds per HTTP call")] = 30.0,
) -> None:
    ctx.obj = Settings(api, api_key, id_token, timeout)


def _client(ctx: typer.Context, api: str | None, api_key: str | None) -> ApiClient:
    """The API client; --api / --api-key given after the command win over those before it."""
    settings: Settings = ctx.obj or Settings()
    base = api or settings.api
    if not re.match(r"^https?://[^/\s]+", base):
        raise UsageProblem(f"--api must be an http:// or https:// URL, not {base!r}")
    return ApiClient(base, api_key=api_key or settings.api_key, id_token=settings.id_token,
                     timeout=settings.timeout)


def _reports_errors(command):
    """Expected failures as one ``error:`` line and their exit code, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ClientError, inputs.InputError, dl.DownloadError, watch.StillRunning) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(getattr(exc, "exit_code", 1)) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _echo_json(body: dict) -> None:
    typer.echo(json.dumps(body, indent=2, sort_keys=False))


def _money(value) -> str:
    """$0.195, $12.00, $0.0195: cents always, fractions of a cent when there are any."""
    if not isinstance(value, (int, float)):
        return str(value)
    whole, _, fraction = f"{value:,.4f}".partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"


# --- submit ------------------------------------------------------------------------------------


@app.command()
@_reports_errors
def submit(
    ctx: typer.Context,
    file: Annotated[Optional[str], typer.Argument(
        help="Prompts: .txt (one a line), .jsonl (objects with prompt, key, aspect_ratio, domain, quality) "
             "or .csv (a header row with a prompt column); - reads stdin", show_default=False)] = None,
    images: Annotated[Optional[int], typer.Option(
        "--images", "-n", min=1, help="Submit N built-in sample prompts instead of a file", show_default=False)] = None,
    lane: Annotated[Literal["auto", "interactive", "batch"], typer.Option(
        "--lane", help="auto: small jobs interactive, big ones batch")] = "auto",
    fmt: Annotated[Optional[Literal["txt", "jsonl", "csv"]], typer.Option(
        "--format", help="The file's format when its extension doesn't say", show_default=False)] = None,
    aspect_ratio: Annotated[Optional[str], typer.Option(
        "--aspect-ratio", help="For items that don't set one, e.g. 16:9", show_default=False)] = None,
    quality: Annotated[Optional[Literal["standard", "high"]], typer.Option(
        "--quality", help="For items that don't set one", show_default=False)] = None,
    domain: Annotated[Optional[str], typer.Option(
        "--domain", help="Context added to items that don't set one", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="The image model, e.g. gemini-3-pro-image (imagefleet stats lists them); "
                        "default: the deployment's", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the route and estimated cost; submit nothing")] = False,
    source_bucket: Annotated[Optional[str], typer.Option(
        "--source-bucket", envvar=upload.SOURCE_BUCKET_ENV, show_envvar=True, show_default=False,
        help="gs://BUCKET[/PREFIX]: a file too big for one request (over 10,000 prompts or 10 MiB) is uploaded "
             "there and the API reads it from there")] = None,
    on_bad_line: Annotated[Optional[Literal["skip", "fail"]], typer.Option(
        "--on-bad-line", help="An uploaded file's line the API refuses: skip it, or fail the job "
                              "[default: the API's]", show_default=False)] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", "-w", help="Follow the job to its end, then download it")] = False,
    out: OutOption = None,
    project: ProjectOption = None,
    interval: IntervalOption = 1.0,
    wait_timeout: WaitTimeoutOption = None,
    json_out: JsonOption = False,
    api: ApiOption = None,
    api_key: KeyOption = None,
) -> None:
    """Submit a job: prompts from a file, or --images N samples."""
    if (file is None) == (images is None):
        raise UsageProblem("give a prompt file or --images N (one of them)")
    if json_out and wait:
        raise UsageProblem("--json prints the API's answer to the submit; leave out --wait, or --json")
    prompts = inputs.read_prompts(file, fmt) if file is not None else inputs.sample_prompts(images or 0)
    prompts = inputs.apply_defaults(prompts, aspect_ratio=aspect_ratio, quality=quality, domain=domain)
    items = [p.item for p in prompts]
    client = _client(ctx, api, api_key)
    too_big = not upload.fits_one_request(job_body(items, lane, model))
    if too_big and dry_run:
        raise UsageProblem(f"{_plural(len(items), 'prompt')} do not fit one request; --dry-run needs a smaller file")
    try:
        if too_big:
            accepted = _submit_source(client, prompts, source_bucket, project, lane=lane, model=model,
                                      on_bad_line=on_bad_line)
        elif dry_run:
            plan = client.dry_run(items, lane, model)
        else:
            accepted = client.submit(items, lane, idempotency_key=str(uuid.uuid4()), model=model)
    except ApiError as exc:
        raise _located(exc, prompts) from None
    if dry_run:
        if json_out:
            _echo_json(plan)
            return
        typer.echo(f"Dry run: {_plural(plan.get('item_count', len(items)), 'prompt')} would go to the "
                   f"{plan.get('lane', '?')} lane: {plan.get('reason', 'no reason given')}.")
        typer.echo(f"Estimated cost: {_money(plan.get('estimated_cost_usd', '?'))}"
                   f"   model: {plan.get('model', '?')}   circuit breaker: {plan.get('breaker', '?')}")
        typer.echo("Nothing was submitted.")
        return
    job_id = accepted["job_id"]
    if json_out:
        _echo_json(accepted)
        return
    reason = f" ({accepted['route_reason']})" if accepted.get("route_reason") else ""
    cost = accepted.get("estimated_cost_usd")
    estimate = f", estimated {_money(cost)}" if cost is not None else ""
    typer.echo(f"Submitted job {job_id}: {_plural(accepted.get('item_count', len(items)), 'prompt')}, "
               f"lane {accepted.get('lane', '?')}{reason}{estimate}.")
    if not wait:
        typer.echo(f"Follow it:  imagefleet status {job_id}\nFetch it:   imagefleet download {job_id}")
        return
    raise typer.Exit(_wait_and_download(client, job_id, out, project, interval, wait_timeout))


def _submit_source(client: ApiClient, prompts: list[inputs.Prompt], source_bucket: str | None,
                   project: str | None, **options: str | None) -> dict:
    """Upload the prompts (as JSONL, each on its file's line) and submit the job by its gs:// URI."""
    if not source_bucket:
        raise UsageProblem(
            f"{_plural(len(prompts), 'prompt')} do not fit one request (at most {upload.MAX_BODY_ITEMS:,} prompts "
            f"and {upload.MAX_BODY_BYTES // (1024 * 1024)} MiB): pass --source-bucket gs://BUCKET[/PREFIX] "
            f"(or set {upload.SOURCE_BUCKET_ENV}) to upload the file to Cloud Storage and submit it from there")
    uri = upload.upload(upload.render_jsonl(prompts), upload.parse_destination(source_bucket), project)
    typer.echo(f"Uploaded the prompts to {uri}", err=True)
    return client.submit_source(uri, idempotency_key=str(uuid.uuid4()), **options)  # type: ignore[arg-type]


def _located(exc: ApiError, prompts: list[inputs.Prompt]) -> ApiError:
    """A 400's ``requests[i]...`` fields, told with the file and line item i came from."""

    def located(field: str) -> str:
        match = re.match(r"^requests\[(\d+)\]", field)
        if match and int(match.group(1)) < len(prompts):
            return f"{field} ({prompts[int(match.group(1))].source})"
        return field

    if not exc.fields:
        return exc
    fields = [{**f, "field": located(str(f.get("field", "")))} for f in exc.fields]
    return ApiError(exc.status, exc.reason, exc.message, fields, exc.retry_after)


def _wait_and_download(client: ApiClient, job_id: str, out: Path | None, project: str | None,
                       interval: float, wait_timeout: float | None) -> int:
    started = time.monotonic()
    try:
        status = watch.follow(client, job_id, interval=interval, timeout=wait_timeout)
    except KeyboardInterrupt:
        typer.echo(f"\nStopped following job {job_id}; it goes on: imagefleet status {job_id}", err=True)
        return 130
    elapsed = time.monotonic() - started
    counts = watch.Progress.of(status)
    typer.echo(f"Job {job_id} {status['status']} after {watch.format_seconds(elapsed)}: "
               f"{counts.done} succeeded, {counts.failed} failed" +
               (f", {counts.cancelled} cancelled" if counts.cancelled else "") + _costs(status))
    report = _download(client, job_id, out, project, status)
    if report.problems:
        return 1
    return {"succeeded": 0, "partially_succeeded": 5}.get(status["status"], 4)


def _costs(status: dict) -> str:
    parts = []
    if status.get("estimated_cost_usd") is not None:
        parts.append(f"estimated {_money(status['estimated_cost_usd'])}")
    if status.get("actual_cost_usd") is not None:
        parts.append(f"actual {_money(status['actual_cost_usd'])}")
    return f"; cost {', '.join(parts)}" if parts else ""


# --- download ----------------------------------------------------------------------------------


def _download(client: ApiClient, job_id: str, out: Path | None, project: str | None,
              status: dict | None = None) -> dl.Report:
    status = status or client.job(job_id, page_size=1)
    out = out or Path("out") / job_id
    fetch = dl.gcs_fetcher(project)
    manifest = None
    if status.get("manifest_uri"):
        manifest = fetch(status["manifest_uri"])
        entries = dl.entries_from_manifest(manifest)
    else:
        entries = dl.entries_from_status(client.items(job_id))
        typer.echo(f"Job {job_id} is {status['status']} and has no manifest yet: fetching the images "
                   "there are so far, with nothing to check them against.", err=True)
    report = dl.download(entries, out, fetch, manifest=manifest)
    sheet = contact_sheet.write_contact_sheet(
        entries, out, title=f"imagefleet job {job_id} · {status['status']}")
    shown = _shown_path(out)
    saved = f"Saved {_plural(len(report.fetched), 'image')} to {shown}"
    if report.kept:
        saved += f", kept {len(report.kept)} already there"
    typer.echo(saved + (" (sha256 checked against the manifest)." if report.verified else "."))
    unsuccessful = [e for e in entries if e.state != "succeeded"]
    for entry in unsuccessful[:10]:
        typer.echo(f"  {entry.key}: {entry.state}" + (f": {entry.error}" if entry.error else ""))
    if len(unsuccessful) > 10:
        typer.echo(f"  ... and {len(unsuccessful) - 10} more without an image (see manifest.jsonl)")
    png_note = f" (the first {sheet.shown_in_png} of {sheet.total})" if sheet.shown_in_png < sheet.total else ""
    typer.echo(f"Contact sheet: {_shown_path(sheet.html)} (and {sheet.png.name}{png_note})")
    for problem in report.problems:
        typer.echo(f"error: {problem}", err=True)
    return report


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@app.command()
@_reports_errors
def download(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="The job's id")],
    out: OutOption = None,
    project: ProjectOption = None,
    api: ApiOption = None,
    api_key: KeyOption = None,
) -> None:
    """Download a job's images, manifest and contact sheet; files already there and matching
    the manifest's sha256 are kept."""
    report = _download(_client(ctx, api, api_key), job_id, out, project)
    if report.problems:
        raise typer.Exit(1)


# --- status, cancel, retry, stats ----------------------------------------------------------------


@app.command()
@_reports_errors
def status(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="The job's id")],
    json_out: JsonOption = False,
    api: ApiOption = None,
    api_key: KeyOption = None,
) -> None:
    """A job's status, counts, cost and batches."""
    body = _client(ctx, api, api_key).job(job_id)
    if json_out:
        _echo_json(body)
        return
    _print_status(body)


def _print_status(body: dict) -> None:
    note = " (its items are still being recorded)" if body["status"] == "accepting" else ""
    typer.echo(f"Job {body['job_id']}: {body['status']}{note}")
    if body.get("error"):
        typer.echo(f"  error      {body['error']}")
    typer.echo(f"  lane       {body.get('lane')}" + (f" ({body['route_reason']})" if body.get("route_reason") else "")
               + f"   model {body.get('model')}" + (f"   round {body['round']}" if (body.get("round") or 1) > 1 else ""))
    counts = {k: v for k, v in (body.get("counts") or {}).items() if v}
    typer.echo(f"  items      {body.get('item_count')}: "
               + (", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()) or "none counted yet"))
    cost = _costs(body).removeprefix("; cost ")
    if cost:
        typer.echo(f"  cost       {cost}")
    created, finished = body.get("created_at"), body.get("finished_at")
    if created:
        typer.echo(f"  created    {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(created))}"
                   + (f", finished after {watch.format_seconds(finished - created)}" if finished else ""))
    if body.get("manifest_uri"):
        typer.echo(f"  manifest   {body['manifest_uri']}")
    for batch in body.get("batches") or []:
        typer.echo(f"  batch      {batch.get('gemini_batch') or batch.get('intent_id')}: "
                   f"{batch.get('gemini_state') or batch.get('state')}, {batch.get('items')} items, "
                   f"attempt {batch.get('attempt')}" + (f", {batch['outcome']}" if batch.get("outcome") else ""))
    problems = [it for it in body.get("items") or [] if it.get("error")]
    for item in problems[:10]:
        typer.echo(f"  {item['key']}: {item['state']}: {item['error']}")
    if body.get("next_page_token"):
        typer.echo(f"  (items: the first {len(body.get('items') or [])} shown; --json for the page, "
                   "download for all)")


@app.command()
@_reports_errors
def cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="The job's id")],
    json_out: JsonOption = False,
    api: ApiOption = None,
    api_key: KeyOption = None,
) -> None:
    """Cancel a queued or running job; images already made are kept."""
    body = _client(ctx, api, api_key).cancel(job_id)
    if json_out:
        _echo_json(body)
        return
    progress = watch.Progress.of(body)
    typer.echo(f"Cancelled job {job_id}: now {body['status']}; {progress.done} images made before are kept.")


@app.command()
@_reports_errors
def retry(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="The job's id")],
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Follow the job to its end, then download it")] = False,
    out: OutOption = None,
    project: ProjectOption = None,
    interval: IntervalOption = 1.0,
    wait_timeout: WaitTimeoutOption = None,
    json_out: JsonOption = False,
    api: ApiOption = None,
    api_key: KeyOption = None,
) -> None:
    """Run a job's dead-lettered items again (those that ran out of attempts; refused prompts stay failed)."""
    if json_out and wait:
        raise UsageProblem("--json prints the API's answer to the retry; leave out --wait, or --json")
    client = _client(ctx, api, api_key)
    body = client.retry(job_id)
    if json_out:
        _echo_json(body)
        return
    typer.echo(f"Requeued {_plural(body.get('requeued', 0), 'item')} of job {job_id}; it is {body.get('status', '?')}.")
    if wait:
        raise typer.Exit(_wait_and_download(client, job_id, out, project, interval, wait_timeout))


@app.command()
@_reports_errors
def stats(
    ctx: typer.Context,
    json_out: JsonOption = False,
    api: ApiOption = None,
    api_key: KeyOption = None,
) -> None:
    """Today's usage: requests, images, spend, quota errors, limits, the circuit breaker."""
    body = _client(ctx, api, api_key).stats()
    if json_out:
        _echo_json(body)
        return
    resets = body.get("resets_at")
    typer.echo(f"Usage on {body.get('day', '?')}"
               + (f" (resets in {watch.format_seconds(resets - time.time())})" if isinstance(resets, (int, float)) else ""))
    shown = ("day", "resets_at")
    for section, value in body.items():
        if section in shown:
            continue
        title = section.replace("_", " ")
        if section == "models" and isinstance(value, list):
            _print_models(value)
        elif isinstance(value, dict):
            typer.echo(f"  {title}")
            _print_tree(value, indent=4, none="no limit" if section in ("limits", "budget") else "-")
        else:
            typer.echo(f"  {title}: {_scalar(section, value)}")


def _print_models(models: list) -> None:
    """One line a model: id, lifecycle, shutdown and days left, and a halt in capitals."""
    typer.echo("  models")
    for m in models:
        if not isinstance(m, dict):
            continue
        line = f"    {m.get('id')}{' (default)' if m.get('default') else ''}: {m.get('lifecycle') or 'not in the catalog'}"
        if m.get("shutdown_date"):
            line += f", shutdown {m['shutdown_date']} ({m.get('days_left')} days left)"
        if m.get("halted"):
            line += f", HALTED: {m.get('halt_reason')}"
        typer.echo(line)


def _print_tree(value: dict, indent: int, none: str = "-") -> None:
    """Nested dicts as indented lines: money as dollars, *_at times as local times, lists of
    transitions one a line. Keys this client does not know are printed too."""
    pad = " " * indent
    if not value:
        typer.echo(f"{pad}(none)")
        return
    labels = {key: str(key).removesuffix("_usd").replace("_", " ") for key in value}
    width = max(len(label) for label in labels.values())
    for key, item in value.items():
        label = labels[key]
        if isinstance(item, dict):
            typer.echo(f"{pad}{label}" + ("" if item else ": (none)"))
            if item:
                _print_tree(item, indent + 2, none)
        elif isinstance(item, list) and item and all(isinstance(x, dict) for x in item):
            typer.echo(f"{pad}{label}")
            for entry in item[-5:]:
                typer.echo(f"{pad}  {_record(entry)}")
        else:
            typer.echo(f"{pad}{label:<{width}}  {none if item is None else _scalar(str(key), item)}")


def _record(entry: dict) -> str:
    if {"from", "to"} <= entry.keys():  # a circuit breaker transition
        at = _scalar("at", entry.get("at"))
        return f"{at}  {entry['from']} -> {entry['to']}" + (f": {entry['reason']}" if entry.get("reason") else "")
    return ", ".join(f"{k} {_scalar(k, v)}" for k, v in entry.items())


def _scalar(key: str, value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and key.endswith("usd"):
        return _money(value)
    if isinstance(value, (int, float)) and (key.endswith("_at") or key == "at"):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "(none)"
    return str(value)


def main() -> None:
    app(prog_name="imagefleet")


if __name__ == "__main__":
    main()
