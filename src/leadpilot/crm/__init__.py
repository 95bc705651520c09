"""CRM domain: people, accounts and contacts, leads, tasks, the event log and the audit log."""
