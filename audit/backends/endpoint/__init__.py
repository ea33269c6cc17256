"""Models served over the OpenAI chat-completions protocol (vLLM, SGLang, TGI,
``transformers serve``, hosted APIs): ``backend.EndpointBackend``. docs/endpoint.md."""
