import { Client } from "pg";

/** A fresh test database with the committed migrations applied, once per run. */
export default async function globalSetup() {
  require("./env");
  const url = new URL(process.env.DATABASE_URL!);
  const dbName = url.pathname.slice(1);
  const admin = new Client({ connectionString: Object.assign(new URL(url), { pathname: "/postgres" }).toString() });
  await admin.connect();
  try {
    await admin.query(`drop database if exists "${dbName}" with (force)`);
    await admin.query(`create database "${dbName}"`);
  } finally {
    await admin.end();
  }
  const { migrate } = require("../lib/db");
  await migrate();
}
