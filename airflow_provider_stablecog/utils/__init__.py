"""Small helpers shared by the client, hook and operators (no Airflow import at module level)."""
