"""The page's own CSS (app.py hands it to Gradio): what Gradio's defaults get wrong for this page's
tables, pickers and error boxes at 1400 and 800 pixels."""

CSS = """
/* The tab's error box (common.error_box): stays on screen until the next good action hides it. */
.block.error-box {
  border: 1px solid var(--error-border-color, #ef4444);
  background: var(--error-background-fill, #fef2f2);
  border-radius: var(--radius-md, 6px);
  padding: 8px 12px !important;
}

/* Table headers break between words, never inside one: Gradio sizes each column as a share of the
   table's width and lets a header break anywhere, so at 800 pixels "objective" stood a letter or
   two a line. These tables are given the width their headers need and scroll sideways in a narrower
   window (the column shares then apply to that width, header and rows alike). */
th span.header {
  word-break: normal !important;
  overflow-wrap: normal !important;
}
#runs-table .table-wrap { min-width: 1150px; }
#queue-table .table-wrap { min-width: 820px; }
#hardest .table-wrap, #went-up .table-wrap { min-width: 620px; }
#eval-checks .table-wrap { min-width: 560px; }

/* Run pickers show whole run ids (20261203-000042-lr-sweep-learning_rate-2e-4): a picker is never
   narrower than one, and in a narrow window the buttons beside it move to the next line. */
.form:has(input[aria-label="Run"]), .form:has(input[aria-label="Finished run"]),
.form:has(input[aria-label="Queued run"]) {
  min-width: min(100%, 380px) !important;
}
"""
