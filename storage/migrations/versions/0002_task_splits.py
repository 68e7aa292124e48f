"""Hold-outs carved from single-split tasks, one row per job and task.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('task_splits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('task', sa.String(length=255), nullable=False),
    sa.Column('n_docs', sa.Integer(), nullable=False),
    sa.Column('report_fraction', sa.Float(), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('search_doc_ids', sa.JSON(), nullable=False),
    sa.Column('report_doc_ids', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_task_splits_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task_splits')),
    sa.UniqueConstraint('job_id', 'task', name=op.f('uq_task_splits_job_id_task'))
    )


def downgrade() -> None:
    op.drop_table('task_splits')
