/**
 * gRPC errors as the Pulumi engine reads them. A partial failure travels as
 * a google.rpc.Status in the "grpc-status-details-bin" trailer. The Status
 * carries a pulumirpc.ErrorResourceInitFailed, so the engine records the
 * resource with its id and outputs instead of forgetting it.
 */
import * as grpc from "@grpc/grpc-js";
import { ErrorResourceInitFailed } from "@pulumi/pulumi/proto/provider_pb";
import { Status } from "@pulumi/pulumi/proto/status_pb";
import { Any } from "google-protobuf/google/protobuf/any_pb";
import type { Struct } from "google-protobuf/google/protobuf/struct_pb";

/** An error the server sends with this exact code and message. */
export class RpcError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
    readonly metadata?: grpc.Metadata,
  ) {
    super(message);
    this.name = "RpcError";
  }

  toStatus(): grpc.ServerErrorResponse {
    return Object.assign(new Error(this.message), { code: this.code, details: this.message, metadata: this.metadata ?? new grpc.Metadata() });
  }
}

export interface InitFailure {
  id: string;
  outputs: Struct;
  inputs?: Struct;
  reasons: string[];
}

/**
 * Builds the error for a resource that exists but is not fully set up. The
 * code is UNKNOWN, as in @pulumi/pulumi's own provider server; the details
 * make the engine record a partial failure rather than an unknown state.
 */
export function initFailedError(message: string, failure: InitFailure): RpcError {
  const detail = new ErrorResourceInitFailed();
  detail.setId(failure.id);
  detail.setProperties(failure.outputs);
  if (failure.inputs !== undefined) detail.setInputs(failure.inputs);
  detail.setReasonsList(failure.reasons);

  const packed = new Any();
  packed.pack(detail.serializeBinary(), "pulumirpc.ErrorResourceInitFailed");

  const status = new Status();
  status.setCode(grpc.status.UNKNOWN);
  status.setMessage(message);
  status.addDetails(packed);

  const metadata = new grpc.Metadata();
  metadata.add("grpc-status-details-bin", Buffer.from(status.serializeBinary()));
  return new RpcError(grpc.status.UNKNOWN, message, metadata);
}

/** Returns the message of an error and of its causes, each once, joined by ": ". */
export function describeError(error: unknown, maxDepth = 4): string {
  const parts: string[] = [];
  let current: unknown = error;
  for (let depth = 0; depth < maxDepth && current !== undefined && current !== null; depth++) {
    const message = current instanceof Error ? current.message : String(current);
    if (message !== "" && !parts.some((part) => part.includes(message))) parts.push(message);
    current = current instanceof Error ? current.cause : undefined;
  }
  return parts.length === 0 ? "unknown error" : parts.join(": ");
}
