"""Using a trained model: find its checkpoint (`checkpoints`), load it (`loading`), turn messages into prompts and
generate (`generation`), read and judge reasoning replies (`reasoning`), and serve it over an OpenAI-compatible HTTP
API (`openai_api` for the schema, `server` for the HTTP side, `batching` for decoding concurrent requests together). Evaluation commands build on these (`perplexity`,
`report`, `harness`).

Import the submodules directly (`from inference.loading import load`); this file imports nothing so that the
trainer can use generation and reasoning without loading the rest.
"""
