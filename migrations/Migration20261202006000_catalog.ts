import { Migration } from "@mikro-orm/migrations";

/**
 * What a droplet is built from (SPEC §3): the DigitalOcean size of each plan version, and templates with
 * immutable versions (image + cloud-init user_data). Seeds the demo plans' sizes and the `arcadia-app` template.
 */
export class Migration20261202006000_catalog extends Migration {
  override async up(): Promise<void> {
    // All migrations share one transaction: settle the deferred foreign keys of earlier inserts, or the
    // alter below is refused ("pending trigger events").
    this.addSql(`set constraints all immediate`);
    // Versions written before sizes existed ran on the default size; the demo plans get their own.
    this.addSql(`alter table plan_versions add column droplet_size text not null default 's-1vcpu-1gb'`);
    this.addSql(`alter table plan_versions alter column droplet_size drop default`);
    this.addSql(`update plan_versions set droplet_size = case plan_code when 'studio' then 's-2vcpu-4gb' when 'scale' then 's-4vcpu-8gb' else 's-1vcpu-1gb' end
      where id in ('00000000-0000-4000-8000-000000000101', '00000000-0000-4000-8000-000000000102', '00000000-0000-4000-8000-000000000103')`);

    this.addSql(`create table templates (code text primary key, name text not null, inserted_at timestamptz(3) not null)`);
    this.addSql(`create table template_versions (
      id uuid primary key,
      template_code text not null references templates (code) deferrable initially deferred,
      version integer not null check (version >= 1),
      image text not null,
      user_data text null,
      inserted_at timestamptz(3) not null,
      constraint template_versions_code_version_unique unique (template_code, version)
    )`);

    this.addSql(`insert into templates (code, name, inserted_at) values ('arcadia-app', 'arcadia app', now())`);
    this.addSql(`insert into template_versions (id, template_code, version, image, user_data, inserted_at) values
      ('00000000-0000-4000-8000-000000000201', 'arcadia-app', 1, 'ubuntu-24-04-x64', $user_data$${ARCADIA_APP_USER_DATA}$user_data$, now())`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop table if exists template_versions`);
    this.addSql(`drop table if exists templates`);
    this.addSql(`alter table plan_versions drop column droplet_size`);
  }
}

/** The demo template's cloud-init: installs the app as a systemd service behind Caddy (TLS for its DNS name). */
export const ARCADIA_APP_USER_DATA = `#cloud-config
hostname: {{slug}}
fqdn: {{hostname}}
preserve_hostname: false
package_update: true
packages:
  - ca-certificates
  - curl
  - caddy
users:
  - name: arcadia
    system: true
    shell: /usr/sbin/nologin
    home: /opt/arcadia
write_files:
  - path: /etc/arcadia/app.env
    permissions: "0640"
    owner: root:root
    content: |
      ARCADIA_TENANT_ID={{tenant_id}}
      ARCADIA_DEPLOYMENT_SLUG={{slug}}
      ARCADIA_HOSTNAME={{hostname}}
      ARCADIA_LLM_MODE={{llm_mode}}
      PORT=8080
  - path: /etc/systemd/system/arcadia-app.service
    permissions: "0644"
    content: |
      [Unit]
      Description=arcadia app ({{slug}})
      After=network-online.target
      Wants=network-online.target

      [Service]
      User=arcadia
      EnvironmentFile=/etc/arcadia/app.env
      WorkingDirectory=/opt/arcadia/current
      ExecStart=/usr/bin/node /opt/arcadia/current/server.js
      Restart=always

      [Install]
      WantedBy=multi-user.target
  - path: /etc/caddy/Caddyfile
    permissions: "0644"
    content: |
      {{hostname}} {
        reverse_proxy 127.0.0.1:8080
      }
runcmd:
  - [sh, -c, "curl -fsSL https://deb.nodesource.com/setup_22.x | bash - && apt-get install -y nodejs"]
  - [sh, -c, "mkdir -p /opt/arcadia/releases && curl -fsSL https://releases.arcadia.example/app/latest.tar.gz | tar -xz -C /opt/arcadia/releases && ln -sfn /opt/arcadia/releases/app /opt/arcadia/current"]
  - [chown, -R, "arcadia:arcadia", /opt/arcadia]
  - [systemctl, daemon-reload]
  - [systemctl, enable, --now, arcadia-app.service]
  - [systemctl, restart, caddy]
`;
