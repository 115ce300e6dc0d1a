"""The embedded default's own models and their training: a tiny LLaVA seed (vision pretraining, SFT with early
stopping) and a tiny open_clip verifier, both trained on the procedural world. Real models never pass through here."""
