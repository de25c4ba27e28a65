"""gcp-storage-emulator (a GCS JSON API on loopback) with what TensorStore's GCS driver relies on and the
emulator lacks: the `x-goog-generation` header on downloads, and the generation preconditions
(`ifGenerationMatch` / `ifGenerationNotMatch`: 412, or 304 on a read) that make OCDBT's manifest updates
atomic. Without them Orbax's saves fail at random ("Malformed StorageGeneration").

    python tests/gcs_server.py start --port P --in-memory --default-bucket bkt
"""
import sys
from http import HTTPStatus

from gcp_storage_emulator import __main__ as emulator
from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _generation(request, storage, name: str) -> str:
  try:
    return str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
  except NotFound:
    return "0"  # GCS's generation of an object that does not exist


def _failed(request, generation: str, reading: bool) -> HTTPStatus | None:
  match, not_match = request.query.get("ifGenerationMatch"), request.query.get("ifGenerationNotMatch")
  if match and match[0] != generation:
    return HTTPStatus.PRECONDITION_FAILED
  if not_match and not_match[0] == generation:
    return HTTPStatus.NOT_MODIFIED if reading else HTTPStatus.PRECONDITION_FAILED
  return None


def _guarded(handler, name_of, reading: bool):
  def guarded(request, response, storage, *args, **kwargs):
    generation = _generation(request, storage, name_of(request))
    status = _failed(request, generation, reading)
    if status is not None:
      response.status = status
      return None
    if reading and generation != "0":
      response["x-goog-generation"] = generation
    return handler(request, response, storage, *args, **kwargs)
  return guarded


def _patch() -> None:
  def upload_name(request) -> str:  # in the query, or in a multipart upload's metadata part
    meta = request.data.get("meta", {}) if isinstance(request.data, dict) else {}
    return request.query.get("name", [meta.get("name", "")])[0]

  object_name = lambda request: request.params["object_id"]
  guarded = {objects.insert: _guarded(objects.insert, upload_name, reading=False),
             objects.download: _guarded(objects.download, object_name, reading=True),
             objects.get: _guarded(objects.get, object_name, reading=True)}
  for _, handlers in server.HANDLERS:
    for method, handler in list(handlers.items()):
      handlers[method] = guarded.get(handler, handler)
  objects.insert = guarded[objects.insert]  # the router's fallback for uploads without the /upload prefix


if __name__ == "__main__":
  _patch()
  emulator.main(sys.argv[1:])
