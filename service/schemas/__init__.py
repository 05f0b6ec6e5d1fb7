"""Request and response models of the HTTP API."""

from service.schemas.classify import ClassifyRequest, ClassifyResponse

__all__ = ["ClassifyRequest", "ClassifyResponse"]
