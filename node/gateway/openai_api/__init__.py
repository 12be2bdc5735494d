"""The gateway as an OpenAI-compatible endpoint: point any OpenAI client's base URL at it.

schemas.py    OpenAI's request, response, stream chunk and error shapes (pydantic)
translate.py  a chat request as a one-step workflow; a step's result as the assistant message
errors.py     OpenAIError: OpenAI's status codes and error body; a ClientError mapped to it
service.py    OpenAIService: models of live nodes, running a completion under the pending caps
stream.py     ChatStream: a streamed completion as server-sent chunks from progress frames
routes.py     the routes: POST /v1/chat/completions, GET /v1/models, POST /v1/embeddings
"""
