"""The query-rewriting policy: model preparation, prompt, vLLM server and clients.

Submodules are imported explicitly (`service.policy.client`, ...) so that importing this package
stays cheap: torch/transformers are only loaded by the modules that need them.
"""
