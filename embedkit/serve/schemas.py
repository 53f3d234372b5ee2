"""Request and response bodies, in the shapes of the APIs clients already speak: OpenAI's embeddings API and
text-embeddings-inference's (TEI) routes. Unknown fields are ignored, as both servers do."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Input = str | list[str] | list[int] | list[list[int]]


class OpenAIEmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: ``input`` is a text, texts, token ids or lists of token ids (this model's ids)."""

    input: Input = Field(..., description="a string, a list of strings, token ids, or a list of token-id lists")
    model: str | None = Field(None, description="which served model (may be left out when only one is served)")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="'float' or 'base64' (little-endian float32 bytes)")
    dimensions: int | None = Field(None, description="keep the first N dimensions (Matryoshka), then normalize")
    user: str | None = Field(None, description="ignored")
    prompt_name: str | None = Field(None, description="embedkit extension: 'query' / 'document' or a folder prompt")


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    error: OpenAIErrorBody


class TEIError(BaseModel):
    """TEI's error shape: ``{"error": "...", "error_type": "..."}``."""

    error: str
    error_type: str


class EmbedRequest(BaseModel):
    """``POST /embed`` (TEI)."""

    inputs: str | list[str] = Field(..., description="a text or a list of texts")
    model: str | None = Field(None, description="which served model (embedkit extension; TEI serves one)")
    truncate: bool | None = Field(None, description="cut over-long inputs (default: the server's --auto-truncate)")
    truncation_direction: str = Field("right", description="'right' (the only one embedkit models use)")
    prompt_name: str | None = Field(None, description="'query' / 'document' (the spec's instructions) or a prompt "
                                    "name of the folder's config_sentence_transformers.json")
    normalize: bool | None = Field(None, description="L2-normalize (default: the model's spec)")
    dimensions: int | None = Field(None, description="keep the first N dimensions (Matryoshka)")


class EmbedSparseRequest(BaseModel):
    """``POST /embed_sparse`` (TEI; bge-m3 lexical weights)."""

    inputs: str | list[str]
    model: str | None = None
    truncate: bool | None = None
    truncation_direction: str = "right"
    prompt_name: str | None = None


class SparseValue(BaseModel):
    index: int
    value: float


class TokenizeRequest(BaseModel):
    """``POST /tokenize`` (TEI)."""

    inputs: str | list[str]
    model: str | None = None
    add_special_tokens: bool = True
    prompt_name: str | None = None


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None = None
    stop: int | None = None


class RerankRequest(BaseModel):
    """``POST /rerank`` (TEI): score each of ``texts`` against ``query``; the answer is sorted best first."""

    query: str = Field(..., description="the query")
    texts: list[str] = Field(..., description="the passages to score against the query")
    model: str | None = Field(None, description="which served reranker (embedkit extension; TEI serves one)")
    raw_scores: bool = Field(False, description="the raw logit (true) or its sigmoid (false, TEI's default)")
    return_text: bool = Field(False, description="echo each passage in its result")
    truncate: bool | None = Field(None, description="cut over-long pairs (default: the server's --auto-truncate)")
    truncation_direction: str = Field("right", description="'right' (the only one embedkit models use)")


class RerankResult(BaseModel):
    index: int
    score: float
    text: str | None = None


class CohereRerankRequest(BaseModel):
    """``POST /v1/rerank`` (Cohere / infinity / Jina): ``documents`` ranked against ``query``."""

    query: str = Field(..., description="the query")
    documents: list[str] = Field(..., description="the documents to rank")
    model: str | None = Field(None, description="which served reranker (may be left out when only one is served)")
    top_n: int | None = Field(None, description="return the best N only (default: all)")
    return_documents: bool = Field(False, description="echo each document as {'text': ...}")
