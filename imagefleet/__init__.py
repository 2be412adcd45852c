"""The imagefleet command-line client: ``imagefleet submit | status | download | cancel | retry | stats``."""
