"""Long context (SPEC §6): position schemes on pretrained models, attention-sink (StreamingLLM) cache,
positional vectors, passkey retrieval, perplexity against length, and the toy sandbox.
The schemes themselves are options of the one attention core (`toybb.models.attention`) and of
`toybb.models.positional`; this package sets them on models and runs the experiments."""
