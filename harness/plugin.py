"""pytest plugin (placeholder until the plugin lands; see issue 4)."""
