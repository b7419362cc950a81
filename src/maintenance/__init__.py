"""Legacy package kept for old imports; see ``maintenance.backup``."""
