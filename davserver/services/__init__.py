"""Services: every rule (who may, what changes, what is logged), one transaction per operation."""
