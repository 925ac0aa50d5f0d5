/**
 * metricsd-client: emit LLM-app metrics to a metricsd daemon, never slowing the caller down.
 *
 * ```js
 * import { Emitter } from "metricsd-client";
 * const metrics = new Emitter({ source: "api" }); // $METRICSD_INGEST or tcp://127.0.0.1:5557
 * metrics.request(412.0, { endpoint: "/v1/chat/completions", model: "gpt-4o", output_tokens: 164 });
 * ```
 *
 * The wire format is SPEC §1 of metricsd (docs/protocol.md); the emitter mirrors the Python
 * emitter (`metricsd_client`): same methods, same batching, same frames for the same calls.
 */

export { DEFAULT_ENDPOINT, Emitter } from "./emitter.js";
export { now } from "./clock.js";
export { instrumentOpenAI, uninstrumentOpenAI, type InstrumentOpenAIOptions } from "./openai.js";
export type * from "./types.js";
