"""Each job's objectives and their directions, as a column the store reads (it no longer parses job specs).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
import json

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def _objectives(spec) -> dict:
    """A stored job spec's objectives, as the job file of the first two schemas wrote them."""
    if isinstance(spec, str):
        spec = json.loads(spec)
    listed = (spec or {}).get("objectives") or []
    return {str(o.get("name") or o.get("task") or o.get("cost")): str(o.get("direction", "max"))
            for o in listed if isinstance(o, dict)}


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('objectives', sa.JSON(), nullable=False, server_default='{}'))
    jobs = sa.table('jobs', sa.column('id', sa.Integer()), sa.column('spec', sa.JSON()),
                    sa.column('objectives', sa.JSON()))
    connection = op.get_bind()
    for job_id, spec in connection.execute(sa.select(jobs.c.id, jobs.c.spec)).all():
        connection.execute(jobs.update().where(jobs.c.id == job_id).values(objectives=_objectives(spec)))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('objectives')
