"""The page's own CSS (app.py hands it to Gradio): what Gradio's defaults get wrong for this page's
tables, pickers and error boxes at 1400 and 800 pixels."""

CSS = """
/* The tab's error box (common.error_box): stays on screen until the next good action hides it. */
.block.error-box {
  border: 1px solid var(--error-border-color, #ef4444) !important;
  background: var(--error-background-fill, #fef2f2) !important;
  border-radius: var(--radius-md, 6px);
  padding: 8px 12px !important;
}

/* Table headers break between words, never inside one. Gradio sizes each column as a share of the
   table's width and breaks a word only where it cannot fit: at 800 pixels the Runs table's 6% columns
   were narrower than "objective", which then stood a letter or two a line. These tables get the
   width their longest header words need, and scroll sideways in a narrower window (the shares then
   apply to that width, header and rows alike); at 1400 pixels they are wider than this anyway. */
#runs-table .table-wrap { min-width: 1150px; }
#queue-table .table-wrap { min-width: 820px; }
#dataset-preview .table-wrap { min-width: 900px; }

/* Run pickers show whole run ids (20261203-000042-lr-sweep-learning_rate-2e-4): a picker is never
   narrower than one, and in a narrow window the buttons beside it move to the next line. */
.form:has(input[aria-label="Run"]), .form:has(input[aria-label="Finished run"]),
.form:has(input[aria-label="Queued run"]) {
  min-width: min(100%, 380px) !important;
}
"""
