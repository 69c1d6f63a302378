"""genaug's own flow-matching generator (Shivashankar & Miller)."""
