"""Every score names the lm-eval metric and filter it was read from (none for a cost read off the recipe).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
import json

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def _task_objectives(spec) -> list[str]:
    """A stored job spec's task objectives by name, as the job files of the first three schemas wrote them."""
    if isinstance(spec, str):
        spec = json.loads(spec)
    listed = (spec or {}).get("objectives") or []
    return [str(o.get("name") or o["task"]) for o in listed if isinstance(o, dict) and o.get("task")]


def upgrade() -> None:
    with op.batch_alter_table('scores') as batch:
        batch.add_column(sa.Column('metric', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('filter', sa.String(length=64), nullable=True))
    # Every task score stored before this revision was lm-eval's `acc` under its `none` filter.
    jobs = sa.table('jobs', sa.column('id', sa.Integer()), sa.column('spec', sa.JSON()))
    candidates = sa.table('candidates', sa.column('id', sa.Integer()), sa.column('job_id', sa.Integer()))
    scores = sa.table('scores', sa.column('candidate_id', sa.Integer()), sa.column('objective', sa.String()),
                      sa.column('metric', sa.String()), sa.column('filter', sa.String()))
    connection = op.get_bind()
    for job_id, spec in connection.execute(sa.select(jobs.c.id, jobs.c.spec)).all():
        names = _task_objectives(spec)
        if names:
            of_job = sa.select(candidates.c.id).where(candidates.c.job_id == job_id)
            connection.execute(scores.update().where(scores.c.candidate_id.in_(of_job), scores.c.objective.in_(names))
                               .values(metric='acc', filter='none'))


def downgrade() -> None:
    with op.batch_alter_table('scores') as batch:
        batch.drop_column('filter')
        batch.drop_column('metric')
