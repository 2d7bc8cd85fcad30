"""tlcache compare: frozen heads against fine-tuning on the user's own data."""
