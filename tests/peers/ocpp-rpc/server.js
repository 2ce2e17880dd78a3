'use strict';
/*
 * A strict OCPP 1.6 central system for tests, built on ocpp-rpc with schema validation both ways.
 * Usage: node server.js <port> [TAG ...]   (known tags also from OCPP_RPC_TAGS, comma separated)
 * stdout: "listening <port>", then one JSON object per line:
 *   {"event":"connected","identity":...}, {"event":"call","method":...,"params":...} for every call from the station,
 *   {"event":"validation", ...} for every strict-mode failure, {"event":"result"|"error", ...} for calls we sent.
 * stdin: one JSON object per line, {"method": "RemoteStartTransaction", "params": {...}}, sent to the last station.
 */
const readline = require('node:readline');
const { RPCServer } = require('ocpp-rpc');

const port = Number(process.argv[2] ?? 0);
const knownTags = new Set([...process.argv.slice(3), ...(process.env.OCPP_RPC_TAGS ?? '').split(',')]
    .filter((tag) => tag));
let nextTransactionId = 1001;
let station = null;

const emit = (record) => process.stdout.write(JSON.stringify(record) + '\n');
const now = () => new Date().toISOString();
const tagInfo = (idTag) => ({ status: knownTags.has(idTag) ? 'Accepted' : 'Invalid' });

function serveStation(client) {
    station = client;
    emit({ event: 'connected', identity: client.identity, protocol: client.protocol });
    client.on('call', ({ outbound, payload }) => {
        if (!outbound) emit({ event: 'call', messageId: payload[1], method: payload[2], params: payload[3] });
    });
    client.on('strictValidationFailure', ({ error, messageId, method, params, result, outbound, isCall }) => {
        emit({ event: 'validation', messageId, method, params, result, outbound, isCall, error: String(error) });
    });
    client.on('badMessage', ({ buffer, error }) => {
        emit({ event: 'validation', bad: true, message: buffer.toString(), error: String(error) });
    });
    client.on('close', ({ code }) => emit({ event: 'disconnected', identity: client.identity, code }));

    client.handle('BootNotification', () => ({ status: 'Accepted', currentTime: now(), interval: 300 }));
    client.handle('Heartbeat', () => ({ currentTime: now() }));
    client.handle('StatusNotification', () => ({}));
    client.handle('MeterValues', () => ({}));
    client.handle('Authorize', ({ params }) => ({ idTagInfo: tagInfo(params.idTag) }));
    client.handle('StartTransaction', ({ params }) => ({
        transactionId: nextTransactionId++, idTagInfo: tagInfo(params.idTag),
    }));
    client.handle('StopTransaction', ({ params }) => (params.idTag ? { idTagInfo: tagInfo(params.idTag) } : {}));
}

async function sendToStation(line) {
    let request;
    try {
        request = JSON.parse(line);
    } catch (error) {
        emit({ event: 'error', line, error: `stdin line is not JSON: ${error.message}` });
        return;
    }
    const { method, params = {} } = request;
    if (station === null) {
        emit({ event: 'error', method, error: 'no station connected' });
        return;
    }
    try {
        emit({ event: 'result', method, result: await station.call(method, params) });
    } catch (error) {
        emit({ event: 'error', method, code: error.rpcErrorCode, error: String(error) });
    }
}

async function main() {
    const server = new RPCServer({ protocols: ['ocpp1.6'], strictMode: true });
    server.on('client', serveStation);
    const httpServer = await server.listen(port, '127.0.0.1');
    process.stdout.write(`listening ${httpServer.address().port}\n`);
    readline.createInterface({ input: process.stdin }).on('line', (line) => line.trim() && sendToStation(line));
    process.stdin.on('end', () => server.close({ force: true }).then(() => process.exit(0)));
}

main().catch((error) => {
    process.stderr.write(`ocpp-rpc server failed: ${error.stack ?? error}\n`);
    process.exit(1);
});
