"""The FastAPI app: the service object routes depend on, the cross-cutting HTTP concerns
(access, limits, errors, metrics, drain) and one router per API family.
"""
