"""LitServe serving the same MiniLM (same executor code, same ONNX session settings) for the
real-model benchmark. POST /predict {"input": "text"} -> {"embedding": [...]}.

Usage: python bench/litserve_app.py PORT
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import litserve as ls

from infergate.engine.executors.onnx import OnnxEmbeddingExecutor
from infergate.engine.models.embeddings import resolve_model_file, resolve_tokenizer_file


class MiniLM(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.ex = OnnxEmbeddingExecutor(
            1,
            resolve_model_file("builtin:minilm", "."),
            resolve_tokenizer_file("builtin:minilm", "."),
            1,
        )
        self.ex.load()

    def decode_request(self, request: dict) -> str:  # type: ignore[type-arg]
        return str(request["input"])

    def predict(self, texts: list[str]) -> list[list[float]]:
        return [vec.tolist() for vec, _ in self.ex.run(list(texts), 0)]

    def encode_response(self, output: list[float]) -> dict:  # type: ignore[type-arg]
        return {"embedding": output}


if __name__ == "__main__":
    api = MiniLM(max_batch_size=32, batch_timeout=0.005)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(
        port=int(sys.argv[1]), num_api_servers=1, log_level="warning", generate_client_file=False
    )
