"""Output for people: lme4's summary layout, plots, the command line."""
