-- the second database of docker/compose.yaml's PostgreSQL: the Optuna study (the first, mlflow, is POSTGRES_DB)
CREATE DATABASE optuna;
