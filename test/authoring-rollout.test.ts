/**
 * Gradual rollouts and replays (README "Writing a router"): `router push --percent P` makes a new
 * version live for P% of new connections, chosen by a stable hash of the client's address;
 * `promote` makes it live for all (or for another share), `rollback` ends it; decisions and
 * errors are counted per version in the metrics and in the tenant's stats; a rollout survives a
 * restart. `router replay --version N` runs version N over the tenant's captured rejections and
 * shows where its decisions differ from the live version's. Through the API and the CLI, with
 * real clients connecting from several loopback addresses.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { bucketOf } from '../src/routing/rollout.js';
import { AdminApi, eventually, exchange, runCli, startTestHosting, type TestHosting, writeRouterFile } from './helpers.js';

/** Loopback addresses whose bucket for `salt` is below `percent` (the candidate's clients) and those above. */
function clientsFor(salt: number, percent: number): { candidate: string[]; stable: string[] } {
  const candidate: string[] = [];
  const stable: string[] = [];
  for (let i = 2; i < 250 && (candidate.length < 3 || stable.length < 3); i++) {
    const address = `127.0.0.${i}`;
    (bucketOf(address, salt) < percent ? candidate : stable).push(address);
  }
  return { candidate: candidate.slice(0, 3), stable: stable.slice(0, 3) };
}

/** What each address is answered with, one connection each. */
async function answers(port: number, addresses: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const from of addresses) out.push((await exchange(port, ['hello'], { from })).data);
  return out;
}

describe('gradual rollout', () => {
  let hosting: TestHosting;
  let api: AdminApi;
  let port: number;
  let token: string;
  let env: Record<string, string>;
  before(async () => {
    hosting = await startTestHosting({ quotas: { pushesPerMinute: 6000, pushBurst: 100 } });
    api = hosting.api;
    ({ port, token } = await api.createTenant('acme'));
    env = { SWITCHYARD_URL: `http://127.0.0.1:${hosting.adminPort}`, SWITCHYARD_TOKEN: token };
  });
  after(() => hosting.close());

  it('a push with a percent before any version is refused: there is nothing to share with', async () => {
    const r = await api.call('PUT', '/v1/tenants/acme/router?percent=10', { body: 'proxy(() => ({ close: "v0" }));' });
    assert.equal(r.status, 409, r.text);
    const bad = await api.call('PUT', '/v1/tenants/acme/router?percent=0', { body: 'proxy(() => ({ close: "v0" }));' });
    assert.equal(bad.status, 400, bad.text);
  });

  it('push --percent: the share of clients chosen by address gets the new version, each client always the same one', async () => {
    assert.equal(await api.putRouter('acme', "proxy(() => ({ close: 'v1' }));", token), 1);
    const file = writeRouterFile("proxy(() => ({ close: 'v2' }));");
    const pushed = await runCli(['router', 'push', 'acme', file, '--percent', '30'], env);
    assert.equal(pushed.code, 0, pushed.stderr);
    assert.deepEqual(JSON.parse(pushed.stdout), { version: 2 });

    const { candidate, stable } = clientsFor(2, 30);
    assert.deepEqual(await answers(port, candidate), ['v2', 'v2', 'v2']);
    assert.deepEqual(await answers(port, stable), ['v1', 'v1', 'v1']);
    // Again: the same clients get the same versions, whatever their source port.
    assert.deepEqual(await answers(port, [...candidate, ...stable]), ['v2', 'v2', 'v2', 'v1', 'v1', 'v1']);

    const shown = await api.show('acme');
    assert.equal(shown.version, 1);
    assert.deepEqual(shown.rollout, { version: 2, percent: 30 });
    assert.equal(shown.stats.versions['1'].decisions.close, 6);
    assert.equal(shown.stats.versions['2'].decisions.close, 6);

    const versions = await runCli(['router', 'versions', 'acme'], env);
    assert.deepEqual(
      JSON.parse(versions.stdout).versions.map((v: { version: number; live: boolean; percent: number }) => [v.version, v.live, v.percent]),
      [
        [2, true, 30],
        [1, true, 70],
      ],
    );
  });

  it('the metrics split decisions and errors by version', async () => {
    const r = await api.call('GET', '/metrics');
    assert.match(r.text, /^switchyard_version_decisions_total\{tenant="acme",version="1",kind="close"\} 6$/m);
    assert.match(r.text, /^switchyard_version_decisions_total\{tenant="acme",version="2",kind="close"\} 6$/m);
    assert.match(r.text, /^switchyard_version_router_errors_total\{tenant="acme",version="2",kind="throw"\} 0$/m);
    assert.match(r.text, /^switchyard_decisions_total\{tenant="acme",kind="close"\} 12$/m);
  });

  it('promote --percent widens the share (the clients it had keep it); rollback ends the rollout', async () => {
    const { candidate: first } = clientsFor(2, 30);
    const wider = await runCli(['router', 'promote', 'acme', '--percent', '60'], env);
    assert.equal(wider.code, 0, wider.stderr);
    assert.deepEqual(JSON.parse(wider.stdout), { version: 2 });
    assert.deepEqual(await answers(port, first), ['v2', 'v2', 'v2']);
    const { candidate, stable } = clientsFor(2, 60);
    assert.deepEqual(await answers(port, candidate), ['v2', 'v2', 'v2']);
    assert.deepEqual(await answers(port, stable), ['v1', 'v1', 'v1']);

    const back = await api.call('POST', '/v1/tenants/acme/router/rollback');
    assert.deepEqual([back.status, back.json], [200, { version: 1 }]);
    assert.deepEqual(await answers(port, [...candidate, ...stable]), ['v1', 'v1', 'v1', 'v1', 'v1', 'v1']);
    assert.equal((await api.show('acme')).rollout, null);
    const none = await api.call('POST', '/v1/tenants/acme/router/promote');
    assert.equal(none.status, 409, none.text);
  });

  it('promote makes the rollout live for every new connection', async () => {
    assert.equal((await api.call('PUT', '/v1/tenants/acme/router?percent=10', { body: "proxy(() => ({ close: 'v3' }));" })).json.version, 3);
    const { candidate, stable } = clientsFor(3, 10);
    assert.deepEqual(await answers(port, [candidate[0]!, stable[0]!]), ['v3', 'v1']);
    const promoted = await runCli(['router', 'promote', 'acme'], env);
    assert.deepEqual(JSON.parse(promoted.stdout), { version: 3 });
    assert.deepEqual(await answers(port, [...candidate, ...stable]), ['v3', 'v3', 'v3', 'v3', 'v3', 'v3']);
    const shown = await api.show('acme');
    assert.deepEqual([shown.version, shown.rollout], [3, null]);
  });

  it('a rollout survives a restart of the service', async () => {
    assert.equal((await api.call('PUT', '/v1/tenants/acme/router?percent=50', { body: "proxy(() => ({ close: 'v4' }));" })).json.version, 4);
    const { dataDir, ports } = hosting;
    await hosting.close();
    hosting = await startTestHosting({ dataDir, ports });
    api = hosting.api;
    const { candidate, stable } = clientsFor(4, 50);
    assert.deepEqual(await answers(port, [...candidate, ...stable]), ['v4', 'v4', 'v4', 'v3', 'v3', 'v3']);
    assert.deepEqual((await api.show('acme')).rollout, { version: 4, percent: 50 });
  });
});

describe('replay before promoting', () => {
  let hosting: TestHosting;
  before(async () => {
    hosting = await startTestHosting({ quotas: { pushesPerMinute: 6000, pushBurst: 100 } });
  });
  after(() => hosting.close());

  it("runs a version over the tenant's captured rejections and shows where it decides otherwise than the live one", async () => {
    const api = hosting.api;
    const { port, token } = await api.createTenant('shop');
    // Live: refuses everything; a greeting it does not know is closed without a word.
    await api.putRouter('shop', "proxy((data) => ({ close: data.startsWith('HELLO') ? 'hi, but no' : true }));");
    for (const first of ['HELLO 1', 'PING', 'HELLO 2', 'BOOM']) await exchange(port, [first]);
    await eventually(async () => (await api.rejections('shop')).length === 4, 'four rejections');
    // The candidate answers PING, and throws on BOOM.
    const candidate = "proxy((data) => {\n  if (data === 'BOOM') throw new Error('boom');\n  return data === 'PING' ? { noop: true, reply: 'PONG' } : { close: data.startsWith('HELLO') ? 'hi, but no' : true };\n});\n";
    assert.equal((await api.call('PUT', '/v1/tenants/shop/router?percent=1', { body: candidate })).json.version, 2);

    const r = await api.call('POST', '/v1/tenants/shop/router/replay', { body: { version: 2 }, token });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual([r.json.version, r.json.against, r.json.replayed, r.json.skipped, r.json.differ], [2, 1, 4, 0, 2]);
    const byInput = Object.fromEntries(
      (r.json.results as { firstBytes: string; differs: boolean; live: Record<string, unknown>; candidate: Record<string, unknown> }[]).map((x) => [Buffer.from(x.firstBytes, 'base64').toString(), x]),
    );
    assert.equal(byInput['HELLO 1']!.differs, false);
    assert.deepEqual(byInput.PING!.live.decision, { close: true });
    assert.deepEqual(byInput.PING!.candidate.decision, { noop: true, reply: 'PONG' });
    assert.equal(byInput.PING!.differs, true);
    assert.equal(byInput.BOOM!.candidate.reason, 'router_throw');
    assert.equal(byInput.BOOM!.candidate.line, 2);
    assert.equal(byInput.BOOM!.differs, true);
    assert.deepEqual((r.json.results as { firstBytes: string }[]).map((x) => Buffer.from(x.firstBytes, 'base64').toString()), ['BOOM', 'HELLO 2', 'PING', 'HELLO 1']);

    // The replay counts in no metric: version 2 took no connection.
    assert.deepEqual((await api.show('shop')).stats.versions['2'], { decisions: { remote: 0, noop: 0, close: 0 }, routerErrors: { timeout: 0, memory: 0, invalid: 0, throw: 0, unavailable: 0, penalty: 0 } });

    const env = { SWITCHYARD_URL: `http://127.0.0.1:${hosting.adminPort}`, SWITCHYARD_TOKEN: token };
    const cli = await runCli(['router', 'replay', 'shop', '--version', '2'], env);
    assert.equal(cli.code, 0, cli.stderr);
    assert.equal(JSON.parse(cli.stdout).differ, 2);
    // A version not kept; a version that is not a number.
    assert.equal((await api.call('POST', '/v1/tenants/shop/router/replay', { body: { version: 9 } })).status, 404);
    assert.equal((await runCli(['router', 'replay', 'shop', '--version', 'two'], env)).code, 2);
    // Replaying an older version that is not live nor rolled out loads it for the replay only.
    const old = await api.call('POST', '/v1/tenants/shop/router/replay', { body: { version: 1 } });
    assert.deepEqual([old.status, old.json.differ], [200, 0]);
  });
});
