"""What the Snakemake workflow (``workflow/``) imports at parse time, from the installed p2core rather than from files
beside the Snakefile, so that the workflow also runs as a module deployed from another folder or from GitHub:
the config check with its schema (:mod:`.config_check`) and the rule -> command table of the code fingerprints
(:mod:`.steps`). Neither imports torch: a no-op run stays fast."""
