/**
 * The transport and ProxyMachine parity tests again, with established connections relayed by
 * Node streams: the path taken where the native relay cannot run (not Linux, the addon not
 * built) or is turned off with SWITCHYARD_RELAY=node. Child processes inherit the setting.
 */
process.env['SWITCHYARD_RELAY'] = 'node';
await import('./transport.test.js');
await import('./proxymachine.test.js');
