"""Report: the stakeholder report of the sidebar's window, segment and reference window, as one
self-contained HTML file to download and forward, with a preview of it."""

import streamlit as st

from mlmon_core.report import STATUS_WORDS, render_html
from pages.common import guarded, require_context, run_with_progress

PREVIEW_HEIGHT = 1100
HTML_MEMO = "report_html"


def _html(ctx, report) -> str:
    """The report's HTML, rendered once per report (reruns of the page reuse it)."""
    key = (ctx.key, str(ctx.window), str(ctx.reference), repr(ctx.segment), report.generated_at)
    memo = st.session_state.get(HTML_MEMO)
    if memo is None or memo[0] != key:
        memo = (key, render_html(report))
        st.session_state[HTML_MEMO] = memo
    return memo[1]


def summary_section(report) -> None:
    """The verdict and the summary sentences, as the report opens with them."""
    st.subheader(STATUS_WORDS[report.status])
    st.markdown("\n".join(f"- {sentence}" for sentence in report.summary))


def download_section(ctx, report, html: str) -> None:
    """The HTML file to download, with its size."""
    name = f"mlmon-report-{str(ctx.window).replace('..', '_to_')}.html"
    st.download_button("Download the report (HTML)", html.encode("utf-8"), file_name=name,
                       mime="text/html", key="report-download", type="primary")
    took = sum(seconds for step, seconds in report.timings.items() if step != "render")
    st.caption(f"{len(html.encode('utf-8')) / 1e6:.1f} MB, one file with everything inside: it "
               f"opens in any browser without a network, and prints well. Built in {took:.1f} s; "
               f"sections: {', '.join(report.sections)}.")


def main() -> None:
    """Render the page."""
    ctx = require_context()
    st.title("Report")
    st.caption(f"{ctx.window} · {ctx.segment_text} · reference {ctx.reference}")
    st.markdown("A report for people who never open mlmon: whether the model is doing well, "
                "what got worse, where it is weakest, data problems and drift, in plain words "
                "with the numbers behind them. It covers the window, segment and reference "
                "window chosen in the sidebar.")
    report = run_with_progress("mlmon_core.report:build_report", ctx, "Building the report",
                               ctx.window, ctx.reference, ctx.segment)
    html = _html(ctx, report)
    summary_section(report)
    download_section(ctx, report, html)
    st.header("Preview")
    st.iframe(html, height=PREVIEW_HEIGHT)


guarded(main)
