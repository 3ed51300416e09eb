"""Generated Python stubs of the parakeet.v1 contract (protos/parakeet/v1), made by `buf generate`.

`from parakeet_client.proto.parakeet.v1 import transcription_pb2, transcription_pb2_grpc`: the
module path carries this package's name, the proto file, package and wire names stay
`parakeet/v1/transcription.proto` and `parakeet.v1`.
"""
