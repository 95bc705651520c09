"""Contracts and payments: contracts with e-signature, payment plans, payments, reminders and overdue alerts."""
