"""Getting a run out: export.py writes the adapter, the merged model and the zip and pushes to the Hub,
gguf.py writes GGUF files for llama.cpp, model_card.py writes the README that travels with them,
common.py holds the error and the never-overwrite rule they share, and
space.py is the policy of a Hugging Face Space (who may do what on a public page)."""
