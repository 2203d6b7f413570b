// An order service's write path in Node.js (the official MongoDB driver), beside which
// outbox-relay runs.
//
// Each order is written together with its event in one MongoDB transaction. The event is the
// plain shape {type, aggregateId, data, timestamp} inserted as is into the outbox collection: no
// relay fields, no partition, no status. The relay publishes it to RabbitMQ and marks it
// delivered.
//
//   MONGODB_URI=... OUTBOX_DATABASE=shop node writer.js --orders 10 [--events-per-order 3]
//
// With --events-per-order N each order gets OrderCreated, OrderPaid, ... each in a transaction
// of its own, as a service writes them over an order's life. With --trace each event carries a
// W3C `traceparent`, as a traced service would write its current span's context (no OpenTelemetry
// SDK for Node.js is packaged here, so the writer makes the ids itself: one trace per order, one
// span id per write). Prints one JSON object: the events in the order they were written.
'use strict';

const crypto = require('crypto');
const { MongoClient, Decimal128, ObjectId } = require('mongodb');

const LIFECYCLE = ['OrderCreated', 'OrderPaid', 'OrderPacked', 'OrderShipped', 'OrderDelivered'];

function option(name, fallback) {
  const index = process.argv.indexOf(`--${name}`);
  return index > 0 ? process.argv[index + 1] : fallback;
}

// Runs `work` in a transaction (the driver retries transient transaction errors). The 3.6 driver
// refuses to start a session while its view of the server is unknown (a heartbeat missed on a busy
// server): a ping waits for the server to be selectable again, then the write is tried again. No
// transaction has started then, so nothing is written twice.
async function inTransaction(client, work) {
  for (let attempt = 1; ; attempt++) {
    let session;
    try {
      session = client.startSession();
    } catch (error) {
      if (attempt >= 10 || !/does not support sessions/.test(error.message)) throw error;
      await client.db('admin').command({ ping: 1 });
      continue;
    }
    try {
      await session.withTransaction(() => work(session));
      return;
    } finally {
      session.endSession();
    }
  }
}

async function main() {
  const orders = Number(option('orders', '10'));
  const perOrder = Number(option('events-per-order', '1'));
  const collection = option('collection', process.env.OUTBOX_COLLECTION || 'outbox');
  const traced = process.argv.includes('--trace');
  if (!(perOrder >= 1 && perOrder <= LIFECYCLE.length)) throw new Error(`--events-per-order must be 1 to ${LIFECYCLE.length}`);

  const client = await MongoClient.connect(process.env.MONGODB_URI, { useUnifiedTopology: true });
  const db = client.db(process.env.OUTBOX_DATABASE || 'outbox');
  const written = [];
  try {
    for (let n = 0; n < orders; n++) {
      const orderId = new ObjectId().toHexString();
      const order = {
        _id: orderId,
        customerId: `customer-${n}`,
        items: [
          { sku: 'SKU-1', quantity: 2, unitPrice: Decimal128.fromString('19.99') },
          { sku: 'SKU-2', quantity: 1, unitPrice: Decimal128.fromString('5.01') },
        ],
        totalAmount: Decimal128.fromString('44.99'),
        status: 'created',
      };
      const traceId = crypto.randomBytes(16).toString('hex');
      for (let step = 0; step < perOrder; step++) {
        const type = LIFECYCLE[step];
        const event = {
          type,
          aggregateId: orderId,
          data: { orderId, customerId: order.customerId, totalAmount: order.totalAmount, items: order.items, step },
          timestamp: new Date(),
        };
        // version 00, the order's trace, this write's span, sampled
        if (traced) event.traceparent = `00-${traceId}-${crypto.randomBytes(8).toString('hex')}-01`;
        await inTransaction(client, async (session) => {
          if (step === 0) await db.collection('orders').insertOne(order, { session });
          else await db.collection('orders').updateOne({ _id: orderId }, { $set: { status: type } }, { session });
          await db.collection(collection).insertOne(event, { session });
        });
        written.push({ id: event._id.toHexString(), type, aggregateId: orderId, traceparent: event.traceparent });
      }
    }
  } finally {
    await client.close();
  }
  process.stdout.write(JSON.stringify({ events: written }) + '\n');
}

main().catch((error) => {
  process.stderr.write(`writer failed: ${error.message}\n`);
  process.exit(1);
});
