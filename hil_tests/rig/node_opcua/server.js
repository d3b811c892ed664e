// A small node-opcua server for the OPC UA driver tests: the same address space as
// tests/drivers/opcua_server.py (namespace urn:linesentry:test, Objects/Plant/Line1/<Name>,
// node ids s=Line1.<Name>), so one conformance suite runs against both stacks.
//
//   node server.js '{"port": 4841, "limits": 5, "secure": {"pki": DIR, "cert": PEM, "key": PEM,
//                   "trusted": [DER...], "rejectUnknown": true}}'
//
// Prints "READY <port>" when listening. Reads JSON lines on stdin:
//   {"set": "Temperature", "value": 30}   -> "OK"      (change a value)
//   {"quit": true}                         -> exits
"use strict";

const fs = require("fs");
const readline = require("readline");
const {
    OPCUAServer, OPCUACertificateManager, DataType, Variant, StatusCodes, MessageSecurityMode,
    SecurityPolicy, standardUnits,
} = require("node-opcua");

const NS_URI = "urn:linesentry:test";
const opts = JSON.parse(process.argv[2] || "{}");

// name -> [initial value, DataType, writable, arrayType]
const VARIABLES = {
    Temperature: [21.5, DataType.Double, false],
    Pressure: [1.25, DataType.Float, false],
    Count: [7, DataType.Int32, false],
    Running: [true, DataType.Boolean, false],
    Setpoint: [50.0, DataType.Double, true],
    Mode: [1, DataType.Int32, true],
    Broken: [0.0, DataType.Double, false],
    Drifting: [3.0, DataType.Double, false],
    Label: ["hello", DataType.String, false],
    Vector: [[1.5, 2.5, 3.5, 4.5, 5.5], DataType.Double, false],
};
for (let i = 0; i < 12; i++) VARIABLES[`N${i}`] = [i, DataType.Double, false];

function limitsOf(n) {
    if (!n) return {};
    return {
        maxNodesPerRead: n, maxNodesPerWrite: n, maxNodesPerTranslateBrowsePathsToNodeIds: n,
        maxMonitoredItemsPerCall: n, maxNodesPerBrowse: n, maxNodesPerRegisterNodes: n,
    };
}

async function main() {
    const secure = opts.secure;
    const options = {
        port: opts.port,
        hostname: "127.0.0.1",
        resourcePath: "/linesentry/",
        buildInfo: { productName: "linesentry node-opcua test server" },
        serverInfo: { applicationUri: opts.applicationUri || "urn:linesentry:node-opcua-test-server" },
        serverCapabilities: { operationLimits: limitsOf(opts.limits) },
        allowAnonymous: true,
        securityPolicies: [SecurityPolicy.None],
        securityModes: [MessageSecurityMode.None],
    };
    if (secure) {
        const cm = new OPCUACertificateManager({
            rootFolder: secure.pki, automaticallyAcceptUnknownCertificate: !secure.rejectUnknown,
        });
        await cm.initialize();
        for (const der of secure.trusted || []) {
            await cm.trustCertificate(fs.readFileSync(der));
        }
        Object.assign(options, {
            serverCertificateManager: cm, certificateFile: secure.cert, privateKeyFile: secure.key,
            securityPolicies: [SecurityPolicy.None, SecurityPolicy.Basic256Sha256],
            securityModes: [MessageSecurityMode.None, MessageSecurityMode.SignAndEncrypt],
        });
    }
    const server = new OPCUAServer(options);
    await server.initialize();
    const addressSpace = server.engine.addressSpace;
    const ns = addressSpace.registerNamespace(NS_URI);
    const plant = ns.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: "Plant",
        nodeId: "s=Plant" });
    const line = ns.addObject({ componentOf: plant, browseName: "Line1", nodeId: "s=Plant.Line1" });
    const nodes = {};
    for (const [name, [value, dataType, writable]] of Object.entries(VARIABLES)) {
        const isArray = Array.isArray(value);
        nodes[name] = ns.addVariable({
            componentOf: line, browseName: name, nodeId: `s=Line1.${name}`, dataType,
            valueRank: isArray ? 1 : -1, arrayDimensions: isArray ? [value.length] : null,
            accessLevel: writable ? "CurrentRead | CurrentWrite" : "CurrentRead",
            userAccessLevel: writable ? "CurrentRead | CurrentWrite" : "CurrentRead",
            value: new Variant({ dataType, value, arrayType: isArray ? 1 : 0 }),
        });
    }
    nodes.Numeric = ns.addVariable({ componentOf: line, browseName: "Numeric", nodeId: "i=4242",
        dataType: DataType.Double, value: new Variant({ dataType: DataType.Double, value: 99.0 }) });
    nodes.Level = ns.addAnalogDataItem({  // has EURange: percent deadbands are allowed on it
        componentOf: line, browseName: "Level", nodeId: "s=Line1.Level", dataType: DataType.Double,
        engineeringUnitsRange: { low: 0, high: 100 }, engineeringUnits: standardUnits.percent,
        value: new Variant({ dataType: DataType.Double, value: 40.0 }),
    });
    nodes.Broken.setValueFromSource(new Variant({ dataType: DataType.Double, value: 0 }),
        StatusCodes.BadSensorFailure);
    nodes.Drifting.setValueFromSource(new Variant({ dataType: DataType.Double, value: 3.0 }),
        StatusCodes.UncertainLastUsableValue);

    await server.start();
    process.stdout.write(`READY ${server.endpoints[0].port}\n`);

    const rl = readline.createInterface({ input: process.stdin });
    rl.on("line", (text) => {
        const msg = JSON.parse(text);
        if (msg.quit) {
            server.shutdown(0).then(() => process.exit(0));
            return;
        }
        const node = nodes[msg.set];
        const dataType = msg.set === "Numeric" || msg.set === "Level" ? DataType.Double : VARIABLES[msg.set][1];
        node.setValueFromSource(new Variant({ dataType, value: msg.value }), StatusCodes.Good);
        process.stdout.write("OK\n");
    });
    rl.on("close", () => server.shutdown(0).then(() => process.exit(0)));
}

main().catch((err) => {
    process.stderr.write(`node-opcua test server failed: ${err && err.stack || err}\n`);
    process.exit(3);
});
