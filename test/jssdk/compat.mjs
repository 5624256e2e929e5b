// compat.mjs drives the IVS emulator with the AWS SDK for JavaScript v3, so
// that the emulator's compatibility is proven against a second official
// client and not tuned to the Go SDK alone. internal/emulator/compat_test.go
// runs it; it can also be run by hand against `stagefleet emulator`:
//
//   EMULATOR_URL=http://127.0.0.1:4566 node compat.mjs
//
// Every check that fails prints what was expected and what came, and the
// script exits 1. On success it prints one JSON line {"ok":true,"checks":N}.

import {
  CreateParticipantTokenCommand,
  CreateStageCommand,
  DeleteStageCommand,
  GetStageCommand,
  IVSRealTimeClient,
  ListParticipantReplicasCommand,
  ListParticipantsCommand,
  ListTagsForResourceCommand,
  StartParticipantReplicationCommand,
  StopParticipantReplicationCommand,
  TagResourceCommand,
  UntagResourceCommand,
  paginateListStages,
} from "@aws-sdk/client-ivs-realtime";

const emulatorURL = process.env.EMULATOR_URL;
if (!emulatorURL) {
  console.error("compat.mjs: set EMULATOR_URL to the emulator's base URL, e.g. http://127.0.0.1:4566");
  process.exit(2);
}

const client = new IVSRealTimeClient({
  endpoint: emulatorURL,
  region: "us-east-1",
  credentials: { accessKeyId: "AKIDTEST", secretAccessKey: "secret" },
  // One attempt: an error must surface as the emulator sent it, not be
  // retried into something else.
  maxAttempts: 1,
});

let checks = 0;

class CheckFailed extends Error {}

// check records one passed check, or stops the run with what went wrong.
function check(cond, what, got) {
  if (!cond) {
    const detail = got === undefined ? "" : `; got ${JSON.stringify(got)}`;
    throw new CheckFailed(`${what}${detail}`);
  }
  checks++;
}

// send runs a command that must succeed, naming it if it does not.
async function send(command) {
  try {
    return await client.send(command);
  } catch (err) {
    throw new CheckFailed(
      `${command.constructor.name} failed: ${err.name}: ${err.message} (HTTP ${err.$metadata?.httpStatusCode})`,
    );
  }
}

// sendFailing runs a command that must fail and returns its error.
async function sendFailing(command) {
  try {
    const out = await client.send(command);
    throw new CheckFailed(`${command.constructor.name} succeeded but should have failed: ${JSON.stringify(out)}`);
  } catch (err) {
    if (err instanceof CheckFailed) throw err;
    return err;
  }
}

// control calls the emulator's own /_emulator/ API, which simulates what
// real participants do with their tokens.
async function control(path, body) {
  const res = await fetch(new URL(path, emulatorURL), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) {
    throw new CheckFailed(`POST ${path}: HTTP ${res.status}: ${text}`);
  }
  return JSON.parse(text);
}

async function main() {
  const tags = { team: "compat", env: "test" };
  const created = await send(new CreateStageCommand({ name: "jssdk-source", tags }));
  const sourceArn = created.stage?.arn;
  check(
    typeof sourceArn === "string" && /^arn:aws:ivs:us-east-1:\d+:stage\/[a-zA-Z0-9-]+$/.test(sourceArn),
    "CreateStage returns a stage ARN",
    created.stage,
  );
  check(created.stage.tags?.team === "compat" && created.stage.tags?.env === "test", "CreateStage echoes the tags", created.stage.tags);

  const got = await send(new GetStageCommand({ arn: sourceArn }));
  check(got.stage?.name === "jssdk-source" && got.stage?.arn === sourceArn, "GetStage returns the stage", got.stage);

  const listed = [];
  for await (const page of paginateListStages({ client }, {})) {
    listed.push(...(page.stages ?? []));
  }
  check(listed.some((s) => s.arn === sourceArn && s.name === "jssdk-source"), "ListStages lists the stage", listed);

  const tok = await send(
    new CreateParticipantTokenCommand({ stageArn: sourceArn, userId: "host", capabilities: ["PUBLISH", "SUBSCRIBE"] }),
  );
  const token = tok.participantToken;
  check(
    typeof token?.token === "string" && token.token.split(".").length === 3 && typeof token.participantId === "string",
    "CreateParticipantToken returns a JWT and a participant id",
    token,
  );
  check(token.expirationTime instanceof Date && !Number.isNaN(token.expirationTime.getTime()), "expirationTime parses as a date", token.expirationTime);

  const joined = await control("/_emulator/participants/join", { token: token.token });
  check(joined.participantId === token.participantId && joined.stageArn === sourceArn, "joining with the token enters the stage", joined);
  const participantId = joined.participantId;
  await control("/_emulator/participants/publish", { stageArn: sourceArn, participantId });

  const dest = await send(new CreateStageCommand({ name: "jssdk-destination" }));
  const destArn = dest.stage.arn;
  check(destArn !== sourceArn, "a second stage has its own ARN", destArn);

  const notPublishing = "wrongParticipant";
  const replErr = await sendFailing(
    new StartParticipantReplicationCommand({
      sourceStageArn: sourceArn,
      destinationStageArn: destArn,
      participantId: notPublishing,
    }),
  );
  check(replErr.name === "ValidationException", "replicating a participant that is not publishing is a ValidationException", replErr.name);
  // Apps built on the JS SDK read the real service's text through
  // error.message; this is what stagefleet matches on.
  check(replErr.message === `${notPublishing} is not publishing`, "error.message is '<id> is not publishing'", replErr.message);
  check(replErr.$metadata?.httpStatusCode === 400, "ValidationException is HTTP 400", replErr.$metadata);

  const started = await send(
    new StartParticipantReplicationCommand({
      sourceStageArn: sourceArn,
      destinationStageArn: destArn,
      participantId,
      reconnectWindowSeconds: 30,
    }),
  );
  check(started.$metadata?.httpStatusCode === 200, "StartParticipantReplication of the publishing participant succeeds", started.$metadata);

  const replicas = await send(new ListParticipantReplicasCommand({ sourceStageArn: sourceArn, participantId }));
  check(
    replicas.replicas?.length === 1 &&
      replicas.replicas[0].replicationState === "ACTIVE" &&
      replicas.replicas[0].destinationStageArn === destArn,
    "ListParticipantReplicas shows one ACTIVE replica in the destination",
    replicas.replicas,
  );

  const destStage = await send(new GetStageCommand({ arn: destArn }));
  const destSession = destStage.stage.activeSessionId;
  check(typeof destSession === "string" && destSession.length > 0, "the destination has an active session", destStage.stage);
  const participants = await send(new ListParticipantsCommand({ stageArn: destArn, sessionId: destSession }));
  const replica = participants.participants?.find((p) => p.participantId === participantId);
  check(
    replica?.replicationType === "REPLICA" && replica.sourceStageArn === sourceArn && replica.replicationState === "ACTIVE",
    "ListParticipants of the destination shows the REPLICA",
    participants.participants,
  );
  check(replica.firstJoinTime instanceof Date, "firstJoinTime parses as a date", replica.firstJoinTime);

  await send(new TagResourceCommand({ resourceArn: sourceArn, tags: { added: "yes" } }));
  const afterTag = await send(new ListTagsForResourceCommand({ resourceArn: sourceArn }));
  check(
    afterTag.tags?.added === "yes" && afterTag.tags?.team === "compat" && afterTag.tags?.env === "test",
    "TagResource adds to the stage's tags",
    afterTag.tags,
  );
  await send(new UntagResourceCommand({ resourceArn: sourceArn, tagKeys: ["added", "env"] }));
  const afterUntag = await send(new ListTagsForResourceCommand({ resourceArn: sourceArn }));
  check(
    JSON.stringify(afterUntag.tags) === JSON.stringify({ team: "compat" }),
    "UntagResource removes the tags named",
    afterUntag.tags,
  );

  const missingArn = "arn:aws:ivs:us-east-1:123456789012:stage/doesNotExist";
  const notFound = await sendFailing(new GetStageCommand({ arn: missingArn }));
  check(notFound.name === "ResourceNotFoundException", "GetStage of a missing stage is ResourceNotFoundException", notFound.name);
  check(notFound.$metadata?.httpStatusCode === 404, "ResourceNotFoundException is HTTP 404", notFound.$metadata);

  const badName = await sendFailing(new CreateStageCommand({ name: "bad name!" }));
  check(badName.name === "ValidationException", "CreateStage with an invalid name is a ValidationException", badName.name);
  check(/\bname\b/.test(badName.message ?? ""), "the ValidationException's message names the member 'name'", badName.message);

  await send(new StopParticipantReplicationCommand({ sourceStageArn: sourceArn, destinationStageArn: destArn, participantId }));
  const stopped = await send(new ListParticipantReplicasCommand({ sourceStageArn: sourceArn, participantId }));
  check(stopped.replicas?.[0]?.replicationState === "STOPPED", "StopParticipantReplication stops the replica", stopped.replicas);

  await send(new DeleteStageCommand({ arn: destArn }));
  await send(new DeleteStageCommand({ arn: sourceArn }));
  const gone = await sendFailing(new GetStageCommand({ arn: sourceArn }));
  check(gone.name === "ResourceNotFoundException", "a deleted stage is gone", gone.name);
}

try {
  await main();
  console.log(JSON.stringify({ ok: true, checks }));
} catch (err) {
  if (err instanceof CheckFailed) {
    console.error(`compat.mjs: check ${checks + 1} failed: ${err.message}`);
  } else {
    console.error("compat.mjs: unexpected error:", err);
  }
  console.log(JSON.stringify({ ok: false, checks, error: String(err?.message ?? err) }));
  process.exit(1);
}
