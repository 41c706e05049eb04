// A typed promise wrapper around the generated ResourceProvider client, for
// tests that talk to the plugin over real gRPC on 127.0.0.1.
import * as grpc from "@grpc/grpc-js";
import { ResourceProviderClient } from "@pulumi/pulumi/proto/provider_grpc_pb";
import { ErrorResourceInitFailed } from "@pulumi/pulumi/proto/provider_pb";
import { Status } from "@pulumi/pulumi/proto/status_pb";
import { Struct } from "google-protobuf/google/protobuf/struct_pb";

export function connectProvider(port: number): ResourceProviderClient {
  return new ResourceProviderClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
}

/**
 * The last overload of each generated unary method. TypeScript infers from
 * the last overload, so matching it gives callProvider exact types.
 */
type UnaryMethod<Request, Response> = (
  request: Request,
  metadata: grpc.Metadata,
  options: Partial<grpc.CallOptions>,
  callback: (error: grpc.ServiceError | null, response: Response) => void,
) => grpc.ClientUnaryCall;

/** Calls one unary method and resolves with its response or rejects with the grpc.ServiceError. */
export function callProvider<Request, Response>(client: ResourceProviderClient, method: UnaryMethod<Request, Response>, request: Request): Promise<Response> {
  return new Promise((resolve, reject) => {
    method.call(client, request, new grpc.Metadata(), {}, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

/** Awaits a call that must fail and returns its error. */
export async function expectRpcError(promise: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await promise;
  } catch (error) {
    return error as grpc.ServiceError;
  }
  throw new Error("expected the call to fail, but it succeeded");
}

/** Returns the ErrorResourceInitFailed detail that an error carries in its trailers, if any. */
export function initFailedDetail(error: grpc.ServiceError): ErrorResourceInitFailed | undefined {
  const [bytes] = error.metadata.get("grpc-status-details-bin");
  if (bytes === undefined) return undefined;
  const status = Status.deserializeBinary(new Uint8Array(bytes as Buffer));
  for (const detail of status.getDetailsList()) {
    const unpacked = detail.unpack(ErrorResourceInitFailed.deserializeBinary, "pulumirpc.ErrorResourceInitFailed");
    if (unpacked !== null) return unpacked;
  }
  return undefined;
}

export function toStruct(value: Record<string, unknown>): Struct {
  return Struct.fromJavaScript(value as Parameters<typeof Struct.fromJavaScript>[0]);
}
