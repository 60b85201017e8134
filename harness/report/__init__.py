"""Reports of a run directory: terminal/Markdown summaries, the HTML report, comparisons."""
