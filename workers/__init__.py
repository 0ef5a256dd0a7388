"""Ray actors: thin shells over rlvr/, one class per role."""
