// A second OPC UA implementation against the service: node-opcua's client (npm `node-opcua-client`).
// Connects without security (development), finds the VisionSystem of the model given by browse path,
// reads its state and oldest result, acknowledges that result, and prints what it saw as one JSON line.
// Usage: node node_opcua_client.js opc.tcp://127.0.0.1:4840 <model>
"use strict";
const { OPCUAClient, AttributeIds, DataType } = require("node-opcua-client");

const NAMESPACE = "urn:bridgenet:inspection:machinevision";

async function main() {
  const [url, model] = process.argv.slice(2);
  const client = OPCUAClient.create({ endpointMustExist: false, connectionStrategy: { maxRetry: 2 } });
  await client.connect(url);
  const session = await client.createSession();
  try {
    const ns = (await session.readNamespaceArray()).indexOf(NAMESPACE);
    const base = `/${ns}:VisionSystems/${ns}:${model}`;
    const find = async (path) => {
      const relative = path.split("/").map((p) => `${ns}:${p}`).join("/");
      const [result] = await session.translateBrowsePath([
        { startingNode: "ns=0;i=85", relativePath: require("node-opcua-client").makeRelativePath(`${base}/${relative}`) },
      ]);
      if (!result.targets || result.targets.length === 0) throw new Error(`no node at ${path}`);
      return result.targets[0].targetId;
    };
    const read = async (path) => (await session.read({ nodeId: await find(path), attributeId: AttributeIds.Value })).value.value;
    const seen = {
      state: await read("VisionStateMachine/CurrentState"),
      subState: await read("VisionStateMachine/CurrentSubState"),
      before: await read("ResultManagement/Unacknowledged"),
      resultId: await read("ResultManagement/OldestResult/ResultId"),
      verdict: await read("ResultManagement/OldestResult/Verdict"),
      partId: await read("ResultManagement/OldestResult/PartId"),
    };
    const call = await session.call({
      objectId: await find("ResultManagement"),
      methodId: await find("ResultManagement/AcknowledgeResult"),
      inputArguments: [{ dataType: DataType.String, value: seen.resultId }],
    });
    seen.acknowledge = call.statusCode.name;
    const again = await session.call({
      objectId: await find("ResultManagement"),
      methodId: await find("ResultManagement/AcknowledgeResult"),
      inputArguments: [{ dataType: DataType.String, value: seen.resultId }],
    });
    seen.acknowledgeAgain = again.statusCode.name;
    seen.after = await read("ResultManagement/Unacknowledged");
    console.log("RESULT " + JSON.stringify(seen));
  } finally {
    await session.close();
    await client.disconnect();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
