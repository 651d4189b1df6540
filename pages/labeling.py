"""Labeling: which unlabeled rows to send for labeling next, why each was chosen, and the exports.

The queue is computed on every run rather than through ``run``'s cache: an export changes which
rows may be proposed (the ledger) without changing the data files the cache key is made of. The
slow parts (slice search, domain classifier, strata) are memoized inside ``mlmon_core.labeling``.
"""

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import streamlit as st

from mlmon_core import labeling
from mlmon_core.errors import MlmonError
from pages.common import download_button, guarded, require_context, with_explain_links

STRATEGY_HELP = {
    "uncertainty": "score closest to the decision threshold (binary classifiers)",
    "segment": "rows of the weak (or degraded) slices found in the window, spread over them",
    "drift": "rows a domain classifier finds most unlike the reference window",
    "diverse": "stratified over bins of the most informative features, covering the feature space",
    "random": "a random baseline (deterministic per seed)",
}
LAST_EXPORT = "labeling_last_export"


def _default_strategies(view) -> list[str]:
    if view.task == "binary" and view.roles.score:
        return ["uncertainty", "diverse", "random"]
    return ["diverse", "random"]


def mix_section(view) -> tuple[dict[str, int], int, str]:
    """Strategies, a budget for each (an even split of N to start with), seed and slice mode."""
    left, right = st.columns([1, 3])
    total = int(left.number_input("Rows to label (N)", min_value=1, max_value=labeling.MAX_QUEUE_ROWS,
                                  value=50, step=10))
    chosen = right.multiselect("Strategies", list(labeling.STRATEGIES),
                               default=_default_strategies(view),
                               help="; ".join(f"**{k}**: {v}" for k, v in STRATEGY_HELP.items()))
    budgets: dict[str, int] = {}
    if chosen:
        split = dict(labeling.parse_strategies({name: None for name in chosen}, total))
        columns = st.columns(len(chosen))
        for column, name in zip(columns, chosen):
            budgets[name] = int(column.number_input(
                f"{name} rows", min_value=0, max_value=labeling.MAX_QUEUE_ROWS, value=split[name],
                key=f"budget-{name}-{total}-{'-'.join(chosen)}", help=STRATEGY_HELP[name]))
    with st.expander("Options"):
        first, second = st.columns(2)
        seed = int(first.number_input("Seed", min_value=0, value=0, step=1,
                                      help="Random choices (random, ties within strata and slices) "
                                           "are the same for the same seed."))
        mode = second.radio("Segment strategy uses", labeling.SLICE_MODES, horizontal=True,
                            format_func=lambda m: {"weak": "weak slices of the window",
                                                   "degraded": "slices that degraded since the "
                                                               "reference"}[m])
    return {name: count for name, count in budgets.items() if count > 0}, seed, mode


def _progress_bar():
    bar = st.progress(0.0, text="Choosing rows…")

    def tell(fraction: float, message: str) -> None:
        bar.progress(min(max(fraction, 0.0), 1.0), text=message)

    return bar, tell


def summary_section(queue) -> None:
    """Pool counts and what each strategy chose (or why it chose fewer)."""
    first, second, third, fourth = st.columns(4)
    first.metric("Rows in window", f"{queue.window_rows:,}")
    second.metric("Unlabeled", f"{queue.unlabeled_rows:,}")
    third.metric("Already exported", f"{queue.already_exported:,}",
                 help="Unlabeled rows sent for labeling before; they are never proposed again.")
    fourth.metric("Chosen", f"{queue.chosen:,} of {queue.requested:,}")
    if queue.reason:
        st.info(queue.reason)
        return
    table = pd.DataFrame([{"strategy": s.name, "requested": s.requested, "chosen": s.chosen,
                           "why fewer": s.reason or ""} for s in queue.strategies])
    if not any(s.reason for s in queue.strategies):
        table = table.drop(columns="why fewer")
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"why fewer": st.column_config.TextColumn(width="large")})
    for outcome in queue.strategies:
        if outcome.note:
            st.caption(f"**{outcome.name}**: {outcome.note}")


def preview_section(queue) -> None:
    """The chosen rows with their reasons; downloadable."""
    st.subheader("Rows to label")
    if queue.rows.empty:
        st.caption("No rows chosen.")
        return
    linked, links = with_explain_links(queue.rows, queue.id_column)
    st.dataframe(linked, hide_index=True, width="stretch",
                 column_config={**links,
                                queue.reason_column: st.column_config.TextColumn(width="large")})
    download_button(queue.rows, "label-queue", "Download preview (CSV)")


def _default_export_name() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    return f"label_exports/label-queue-{stamp}.csv"


def export_section(ctx, queue) -> None:
    """Write the queue under the project folder and record it, so these rows are not proposed
    again; then offer the same file for download."""
    st.subheader("Export and record")
    folder = ctx.view.config.folder
    with st.form("labeling-export", border=False):
        name = st.text_input("File (.csv or .parquet), relative to the project folder",
                             value=_default_export_name(), help=f"Project folder: {folder}")
        submitted = st.form_submit_button("Export and record", type="primary",
                                          disabled=queue.chosen == 0)
    if submitted:
        target = (folder / name).resolve()
        if not target.is_relative_to(folder.resolve()):
            st.error(f"{name}: choose a file inside the project folder {folder}")
            return
        exported = labeling.export_queue(ctx.view, queue, target)
        st.session_state[LAST_EXPORT] = {"path": exported.out, "rows": exported.chosen,
                                         "export_id": exported.export_id}
        st.rerun()
    _last_export()


def _last_export() -> None:
    last = st.session_state.get(LAST_EXPORT)
    if not last:
        return
    path = Path(last["path"])
    st.success(f"Exported {last['rows']:,} rows to `{path}` and recorded them (export "
               f"{last['export_id']}); they will not be proposed again.")
    if path.is_file():
        mime = "text/csv" if path.suffix.lower() == ".csv" else "application/octet-stream"
        st.download_button(f"Download {path.name}", path.read_bytes(), file_name=path.name,
                           mime=mime, key="download-last-export")


def history_section(view) -> None:
    """The last exports from the ledger."""
    st.subheader("Past exports")
    history = labeling.export_history(view)
    if history.empty:
        st.caption(f"No exports recorded yet (the ledger is {labeling.ledger_folder(view)}).")
        return
    rows, exports = labeling.exported_rows(view)
    st.caption(f"{rows:,} rows in {exports:,} export{'s' if exports != 1 else ''}, recorded in "
               f"{labeling.ledger_folder(view)}; newest first.")
    st.dataframe(history, hide_index=True, width="stretch")


def returning_section(ctx) -> None:
    """How labels come back: a file of id + target, ingested into the labels store."""
    st.subheader("Returning labels")
    view = ctx.view
    columns = ", ".join(f"`{c}`" for c in labeling.label_columns(view))
    config = view.config.path or "mlmon.toml"
    st.markdown(
        f"Give the labeling team the exported file. They return a CSV or Parquet file with the "
        f"columns {columns} (one row per labeled id). Add it to the labels store with:")
    st.code(f"mlmon ingest-labels returned-labels.csv --config {config}", language="bash")
    st.markdown("The labels join the log by id, so every metric, slice and chart includes them on "
                "the next look; the exported rows stay out of later queues either way.")
    try:
        from mlmon_core.store import store_directory

        store_directory(view.config, "labels")
    except MlmonError as exc:
        st.caption(f"Note: {exc}.")


def main() -> None:
    """Render the page."""
    ctx = require_context()
    st.title("Labeling")
    st.caption(f"Unlabeled rows of {ctx.window} · {ctx.segment_text} · drift and degraded slices "
               f"against the reference {ctx.reference}")
    budgets, seed, mode = mix_section(ctx.view)
    if not budgets:
        st.info("Choose at least one strategy with at least one row.")
    else:
        bar, tell = _progress_bar()
        queue = labeling.label_queue(ctx.view, ctx.window, ctx.segment, budgets, seed=seed,
                                     reference=ctx.reference, slice_mode=mode, progress=tell)
        bar.empty()
        summary_section(queue)
        preview_section(queue)
        guarded(lambda: export_section(ctx, queue))
    guarded(lambda: history_section(ctx.view))
    returning_section(ctx)


guarded(main)
